//! The visitor's session, given on the first visit and kept in a signed cookie (an HS256 JWT
//! with a 30-day `exp`): a random 128-bit id (`sub`), which names the visitor's private channel,
//! and a display name. Without the secret nobody can forge a cookie, so nobody can claim another
//! session's id; with the same secret, sessions outlive a restart of the application.
//!
//! A name is only a label: it is an adjective, an animal and a number from fixed lists (23,040
//! names), so two visitors may share one, and anyone can get new sessions until one has the name
//! they want. It grants nothing: what a stream may read comes from the id alone.

use http::HeaderMap;
use http::header::COOKIE;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

const COOKIE_NAME: &str = "chat_session";
const LIFETIME_SECS: u64 = 30 * 24 * 3600;

const ADJECTIVES: [&str; 16] = [
    "amber", "brave", "calm", "eager", "fuzzy", "gentle", "happy", "jolly", "keen", "lucky",
    "mellow", "nimble", "quiet", "rapid", "sunny", "witty",
];
const ANIMALS: [&str; 16] = [
    "badger", "beaver", "crane", "dingo", "ferret", "gecko", "heron", "ibis", "koala", "lemur",
    "marten", "otter", "panda", "quokka", "stoat", "walrus",
];

/// Who is on the page, as the session cookie says.
#[derive(Clone, Debug)]
pub struct Visitor {
    /// 32 lowercase hex digits, random: known only to this visitor's browser and the application.
    pub id: String,
    pub name: String,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    name: String,
    exp: u64,
}

/// Issues and checks session cookies with one secret.
pub struct Sessions {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl Sessions {
    pub fn new(secret: &[u8]) -> Self {
        Sessions {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation: Validation::new(Algorithm::HS256),
        }
    }

    /// A new visitor with a random id and name, and the `Set-Cookie` value that keeps them.
    pub fn issue(&self) -> (Visitor, String) {
        let visitor = Visitor {
            id: random_id(),
            name: random_name(),
        };
        let claims = Claims {
            sub: visitor.id.clone(),
            name: visitor.name.clone(),
            exp: jsonwebtoken::get_current_timestamp() + LIFETIME_SECS,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing does not fail");
        // Over HTTPS, add `Secure`.
        let cookie = format!(
            "{COOKIE_NAME}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={LIFETIME_SECS}"
        );
        (visitor, cookie)
    }

    /// The visitor whose valid session cookie the request carries, if any.
    pub fn read(&self, headers: &HeaderMap) -> Option<Visitor> {
        let token = headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .find_map(|pair| pair.trim().strip_prefix(COOKIE_NAME)?.strip_prefix('='))?;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .ok()?
            .claims;
        (is_id(&claims.sub) && is_name(&claims.name)).then_some(Visitor {
            id: claims.sub,
            name: claims.name,
        })
    }
}

/// A fresh random secret, for when none is configured.
pub fn random_secret() -> [u8; 32] {
    let mut secret = [0; 32];
    getrandom::fill(&mut secret).expect("the system's random source");
    secret
}

fn random_id() -> String {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).expect("the system's random source");
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn random_name() -> String {
    let r = getrandom::u64().expect("the system's random source");
    let adjective = ADJECTIVES[(r % 16) as usize];
    let animal = ANIMALS[(r / 16 % 16) as usize];
    format!("{adjective}-{animal}-{}", 10 + r / 256 % 90)
}

/// Whether `name` is one [`Sessions::issue`] could have given.
pub fn is_name(name: &str) -> bool {
    let mut parts = name.split('-');
    let (Some(adjective), Some(animal), Some(number), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    ADJECTIVES.contains(&adjective)
        && ANIMALS.contains(&animal)
        && number.len() == 2
        && number.parse::<u8>().is_ok_and(|n| n >= 10)
}

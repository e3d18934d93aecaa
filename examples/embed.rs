//! Embedding Redisse in an axum application, behind the application's own authentication.
//!
//! Run with `cargo run --example embed`, then:
//!
//! ```text
//! curl -N -H 'Accept: text/event-stream' -H 'Authorization: Bearer alice' localhost:3000/events
//! curl -X POST 'localhost:3000/notify/alice?text=hello'
//! ```
//!
//! The auth layer runs first and puts the user in the request extensions; the channel function
//! (the gem's `channels(env)`) reads it and decides which channels this request may see.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http::StatusCode;
use redisse::{Config, Event, Redisse, Rejection};

/// Who the request is from, as the authentication layer established it.
#[derive(Clone, Debug)]
struct User(String);

/// A stand-in for real authentication: `Authorization: Bearer <user name>`.
async fn authenticate(mut req: Request, next: Next) -> Response {
    let user = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|name| !name.is_empty())
        .map(|name| User(name.to_owned()));
    match user {
        Some(user) => {
            req.extensions_mut().insert(user);
            next.run(req).await
        }
        None => (StatusCode::UNAUTHORIZED, "log in first\n").into_response(),
    }
}

/// The channel function: everybody hears `global`, each user their own channel.
async fn channels(user: Option<User>) -> Result<Vec<String>, Rejection> {
    match user {
        Some(User(name)) => Ok(vec!["global".into(), format!("user.{name}")]),
        None => Err(Rejection::unauthorized("no user")),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let redisse = Redisse::new(Config::default())?;
    let policy = |parts: &http::request::Parts| channels(parts.extensions.get::<User>().cloned());
    let events = Router::new()
        .route_service("/events", redisse.endpoint(policy))
        .layer(middleware::from_fn(authenticate));

    let publisher = redisse.publisher();
    let notify = post(
        move |Path(user): Path<String>, Query(q): Query<HashMap<String, String>>| async move {
            let text = q.get("text").cloned().unwrap_or_default();
            match publisher
                .publish(&format!("user.{user}"), Event::new("notice", text))
                .await
            {
                Ok(id) => (StatusCode::OK, format!("published {id}\n")),
                Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        },
    );
    let app = events.route("/notify/{user}", notify);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://127.0.0.1:3000");
    axum::serve(listener, app).await?;
    Ok(())
}

//! The copy-paste code of docs/access-control.md works: the Ruby, Python and Node functions
//! that mint a subscriber's JWT are run with the real interpreters and their tokens open
//! streams on the real binary; the Python and Node auth-callback handlers are run as the
//! binary's callback; the Ruby (Rack) one is called as Rack would call it.
//!
//! Each interpreter (`ruby`, `python3`, `node`) must be installed: a missing one fails the test
//! with the command that installs it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::support::binary::Redisse;
use crate::support::{PATIENCE, SseStream};

const DOC: &str = include_str!("../../docs/access-control.md");
const SECRET: &str = "a-secret-shared-with-the-app";

/// The code blocks of the document in `lang`, in order.
fn blocks(lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in DOC.lines() {
        match &mut current {
            None if line.trim_end() == format!("```{lang}") => current = Some(String::new()),
            Some(block) if line.trim_end() == "```" => {
                out.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    out
}

fn interpreter(name: &str, install: &str) -> &'static str {
    let found = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(found, "`{name}` is needed by this test: {install}");
    Box::leak(name.to_owned().into_boxed_str())
}

/// Runs `code` with `program` (reading the program from standard input) and returns its
/// standard output, failing the test on a non-zero exit.
fn run(program: &str, args: &[&str], code: &str) -> String {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(code.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{program} failed on:\n{code}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A token minted by the snippet opens a stream on its channel and carries its events; a
/// channel outside it is refused.
async fn token_works(token: &str) {
    let server = Redisse::start(&["--jwt-secret", SECRET, "--jwt-algorithm", "HS256"]);
    let auth = format!("Bearer {token}");
    let mut stream = SseStream::open(
        &server.url("/?user.42.feed"),
        &[("authorization", auth.as_str())],
    )
    .await;
    assert_eq!(stream.status, 200, "token {token}: {}", server.log());
    server.publish("user.42.feed", "hello".into()).await;
    let event = loop {
        let e = stream.next().await;
        if e.event != "lastEventId" {
            break e;
        }
    };
    assert_eq!(event.data, "hello");
    let other = SseStream::open(&server.url("/?user.43.feed"), &[("authorization", &auth)]).await;
    assert_eq!(other.status, 403);
}

#[tokio::test]
async fn the_ruby_token_function_mints_a_token_redisse_accepts() {
    let ruby = interpreter("ruby", "apt-get install ruby");
    let code = format!(
        "{}\nputs redisse_token({SECRET:?}, [\"user.42.*\"])\n",
        blocks("ruby")[0]
    );
    token_works(&run(ruby, &["-"], &code)).await;
}

#[tokio::test]
async fn the_python_token_function_mints_a_token_redisse_accepts() {
    let python = interpreter("python3", "apt-get install python3");
    let code = format!(
        "{}\nprint(redisse_token({SECRET:?}, [\"user.42.*\"]))\n",
        blocks("python")[0]
    );
    token_works(&run(python, &["-"], &code)).await;
}

#[tokio::test]
async fn the_node_token_function_mints_a_token_redisse_accepts() {
    let node = interpreter("node", "apt-get install nodejs");
    let code = format!(
        "{}\nconsole.log(redisseToken({SECRET:?}, [\"user.42.*\"]));\n",
        blocks("js")[0]
    );
    token_works(&run(node, &["-"], &code)).await;
}

/// Starts a callback server with `program`; it prints its port on its first line.
struct CallbackApp(std::process::Child, u16);

impl CallbackApp {
    fn start(program: &str, code: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "redisse-callback-{}-{}",
            std::process::id(),
            program
        ));
        std::fs::write(&path, code).unwrap();
        let mut child = Command::new(program)
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no port from the {program} callback: {line:?}"));
        CallbackApp(child, port)
    }
}

impl Drop for CallbackApp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The callback gives alice her channels and refuses a request without a session.
async fn callback_works(app: &CallbackApp) {
    let url = format!("http://127.0.0.1:{}/", app.1);
    let server = Redisse::start(&["--auth-callback", &url]);
    let mut stream = SseStream::open(&server.url("/"), &[("cookie", "session=alice")]).await;
    assert_eq!(stream.status, 200, "{}", server.log());
    server.publish("user.bob", "not for alice".into()).await;
    server.publish("user.alice", "for alice".into()).await;
    let mut got = Vec::new();
    while got.is_empty() {
        match tokio::time::timeout(PATIENCE, stream.next()).await {
            Ok(e) if e.event == "message" => got.push(e.data),
            Ok(_) => {}
            Err(_) => panic!("no event for alice"),
        }
    }
    assert_eq!(got, ["for alice"]);
    let refused = SseStream::open(&server.url("/?user.alice"), &[]).await;
    assert_eq!(refused.status, 401);
}

#[tokio::test]
async fn the_python_callback_handler_answers_redisse() {
    let python = interpreter("python3", "apt-get install python3");
    let code = format!(
        "{}\nfrom http.server import HTTPServer\n\
         s = HTTPServer((\"127.0.0.1\", 0), RedisseAuth)\n\
         print(s.server_port, flush=True)\ns.serve_forever()\n",
        blocks("python")[1]
    );
    callback_works(&CallbackApp::start(python, &code)).await;
}

#[tokio::test]
async fn the_node_callback_handler_answers_redisse() {
    let node = interpreter("node", "apt-get install nodejs");
    let code = format!(
        "{}\nconst s = http.createServer(redisseAuth).listen(0, \"127.0.0.1\", () => \
         console.log(s.address().port));\n",
        blocks("js")[2]
    );
    callback_works(&CallbackApp::start(node, &code)).await;
}

#[tokio::test]
async fn the_ruby_rack_callback_answers_as_rack_would() {
    let ruby = interpreter("ruby", "apt-get install ruby");
    let code = format!(
        "{}\nstatus, headers, body = RedisseAuth.call({{ \"rack.session\" => {{ \"user_id\" => 42 }} }})\n\
         puts status, headers[\"content-type\"], body.join\n\
         status, _, body = RedisseAuth.call({{}})\nputs status, body.join\n",
        blocks("ruby")[1]
    );
    let out = run(ruby, &["-"], &code);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "200",
            "application/json",
            r#"{"channels":["global","user.42"]}"#,
            "401",
            "log in first"
        ]
    );
}

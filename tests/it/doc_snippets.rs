//! The copy-paste code of docs/access-control.md works: the Ruby, Python and Node functions
//! that mint a subscriber's JWT are run with the real interpreters and their tokens open
//! streams on the real binary; the Python and Node auth-callback handlers are run as the
//! binary's callback; the Ruby (Rack) one is called as Rack would call it. The publishers of
//! docs/publishing.md publish through the binary, retry with their key without a duplicate, and
//! raise on a refusal. The README has no such code of its own (checked here too).
//!
//! Each interpreter (`ruby`, `python3`, `node`) must be installed: a missing one fails the test
//! with the command that installs it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::support::binary::Redisse;
use crate::support::{PATIENCE, SseStream};

const DOC: &str = include_str!("../../docs/access-control.md");
const PUBLISHING: &str = include_str!("../../docs/publishing.md");
const SECRET: &str = "a-secret-shared-with-the-app";

/// The code blocks of docs/access-control.md in `lang`, in order.
fn blocks(lang: &str) -> Vec<String> {
    blocks_of(DOC, lang)
}

/// The code blocks of `doc` in `lang`, in order.
fn blocks_of(doc: &str, lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
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

/// A publisher of docs/publishing.md, given the code that calls it (`{base}` is the internal
/// listener's URL): it publishes the same event twice with one key and once with another, then
/// a bad key; it prints the three ids and `refused`. Subscribers got two events.
async fn publisher_works(program: &str, snippet: &str, calls: &str) {
    let server = Redisse::start(&[]);
    server.publish("warm", String::new()).await;
    let mut stream = SseStream::open(&server.url("/?orders"), &[]).await;
    assert_eq!(stream.next().await.event, "lastEventId");
    let base = server.internal_url("");
    let code = format!("{snippet}\n{}", calls.replace("{base}", &base));
    let out = run(program, &["-"], &code);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    let ids: Vec<u64> = lines[..3].iter().map(|l| l.parse().unwrap()).collect();
    assert_eq!(ids[0], ids[1], "the retry answers the first id: {out}");
    assert!(ids[2] > ids[0], "another key is another event: {out}");
    assert_eq!(lines[3], "refused");
    for id in [ids[0], ids[2]] {
        let e = tokio::time::timeout(PATIENCE, stream.next()).await.unwrap();
        assert_eq!((e.id, e.event.as_str()), (Some(id.to_string()), "paid"));
    }
    server.publish("orders", "end".into()).await;
    let e = stream.next().await;
    assert_eq!(e.data, "end", "a duplicate came before the marker: {e:?}");
}

#[tokio::test]
async fn the_ruby_publisher_retries_without_a_duplicate() {
    let ruby = interpreter("ruby", "apt-get install ruby");
    let calls = r#"
2.times { puts redisse_publish("{base}", "orders", "42", key: "order-42", type: "paid") }
puts redisse_publish("{base}", "orders", "43", key: "order-43", type: "paid")
begin
  redisse_publish("{base}", "orders", "44", key: "bad key", type: "paid")
rescue RuntimeError => e
  puts(e.message.include?("400") ? "refused" : e.message)
end
"#;
    publisher_works(ruby, &blocks_of(PUBLISHING, "ruby")[0], calls).await;
}

#[tokio::test]
async fn the_python_publisher_retries_without_a_duplicate() {
    let python = interpreter("python3", "apt-get install python3");
    let calls = r#"
for _ in range(2):
    print(redisse_publish("{base}", "orders", "42", "order-42", type="paid"))
print(redisse_publish("{base}", "orders", "43", "order-43", type="paid"))
try:
    redisse_publish("{base}", "orders", "44", "bad key", type="paid")
except RuntimeError as e:
    print("refused" if "400" in str(e) else str(e))
"#;
    publisher_works(python, &blocks_of(PUBLISHING, "python")[0], calls).await;
}

#[tokio::test]
async fn the_node_publisher_retries_without_a_duplicate() {
    let node = interpreter("node", "apt-get install nodejs");
    let calls = r#"
(async () => {
  for (let i = 0; i < 2; i++) {
    console.log(await redissePublish("{base}", "orders", "42", { key: "order-42", type: "paid" }));
  }
  console.log(await redissePublish("{base}", "orders", "43", { key: "order-43", type: "paid" }));
  try {
    await redissePublish("{base}", "orders", "44", { key: "bad key", type: "paid" });
  } catch (e) {
    console.log(e.message.includes("400") ? "refused" : e.message);
  }
})();
"#;
    publisher_works(node, &blocks_of(PUBLISHING, "js")[0], calls).await;
}

/// The README shows no Ruby, Python or Node code of its own: the publishers and access-control
/// code users copy live in docs/publishing.md and docs/access-control.md, where the tests above
/// run them. A snippet added to the README would be run by nothing.
#[test]
fn the_readme_has_no_snippet_that_no_test_runs() {
    const README: &str = include_str!("../../README.md");
    for lang in ["ruby", "python", "py", "js", "javascript", "node", "mjs"] {
        let found = blocks_of(README, lang);
        assert!(
            found.is_empty(),
            "README.md has a ```{lang} block, which no test runs: move it to docs/ and run it \
             in tests/it/doc_snippets.rs, or point to the tested one in docs/publishing.md:\n{}",
            found[0]
        );
    }
}

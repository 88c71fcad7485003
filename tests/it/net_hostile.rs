//! A hub that misbehaves: answers that never end, a stream that stalls.
//! The edge must give up with a clear error, in bounded memory and time,
//! and record nothing. The hub is a real HTTP server process (Python's
//! http.server) that lies in the ways a broken or hostile hub could.

use crate::common::tmp;
use crate::net::{command, layer_ids, text, Guard};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const EVIL_HUB: &str = r#"
import sys, time, http.server, socketserver
LAYER = "sha256:" + "ab" * 32
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def endless(self, ctype, first, unit):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.end_headers()
        try:
            self.wfile.write(first)
            block = unit * (1 << 20 // len(unit))
            while True:
                self.wfile.write(block)
        except OSError:
            pass
    def do_GET(self):
        p = self.path.split("?")[0]
        if p.endswith("/layers"):
            self.endless("application/json", b"[", b'{"id":"' + LAYER.encode() + b'"},')
        elif p.endswith("/bundle"):
            self.endless("application/octet-stream", b"", b"\0")
        elif p.endswith("/dedup"):
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            self.wfile.write(b"\x28\xb5\x2f\xfd")
            self.wfile.flush()
            time.sleep(600)
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
s = S(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

#[test]
fn a_hub_that_never_stops_or_stalls_is_given_up_on() {
    let dir = tmp();
    let edge = dir.path().join("edge");
    let mut hub = Command::new("python3").args(["-c", EVIL_HUB]).stdout(Stdio::piped()).spawn().unwrap();
    let mut port = String::new();
    BufReader::new(hub.stdout.take().unwrap()).read_line(&mut port).unwrap();
    let _hub = Guard(Some(hub));
    let url = format!("http://127.0.0.1:{}", port.trim());
    let layer = format!("sha256:{}", "ab".repeat(32));
    let run = |args: &[&str]| {
        let started = Instant::now();
        let mut all = vec!["pull", "--hub", &url, "--client", "edge", "--token", "cs1.x"];
        all.extend_from_slice(args);
        let o = command(&edge, &all, &[("CHUNKSTORE_HUB_TIMEOUT", "2")]).output().unwrap();
        (o, started.elapsed())
    };

    // A layer list that never ends: refused at its size limit.
    let (o, took) = run(&["ab"]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("over the") && err.contains("limit"), "{err}");
    assert!(took < Duration::from_secs(60), "{took:?}");

    // A dedup stream that stalls, then a recipe bundle that never ends: the
    // stall is a broken transfer (resumed once, then chunk by chunk), and the
    // bundle is refused at its limit.
    let (o, took) = run(&[&layer]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("recipe") && err.contains("limit"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(took < Duration::from_secs(60), "{took:?}");
    assert!(layer_ids(&edge).is_empty());
}

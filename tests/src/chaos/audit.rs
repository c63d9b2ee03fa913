//! The API server's audit log, followed while the run goes (it rotates at 100 MB,
//! so reading it only at the end could miss the start): every write the operator's
//! users made, with the time the API server received it. The checker uses it to
//! time failovers (a new leader's lease write and first other write) and to find
//! writes of a deposed leader.
use serde_json::Value;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WRITES: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

/// One request of an operator user (a write, unless the tail keeps reads too).
#[derive(Clone, Debug)]
pub struct Write {
    pub user: String,
    pub verb: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    pub code: i64,
    pub received: jiff::Timestamp,
}

impl Write {
    /// Whether the request changes something (create, update, patch, delete).
    pub fn is_write(&self) -> bool {
        WRITES.contains(&self.verb.as_str())
    }

    /// A write of the leader-election Lease.
    pub fn is_lease(&self, namespace: &str, name: &str) -> bool {
        self.resource == "leases" && self.namespace == namespace && self.name == name
    }

    pub fn describe(&self) -> String {
        let sub = if self.subresource.is_empty() {
            String::new()
        } else {
            format!("/{}", self.subresource)
        };
        format!(
            "{} {} {}{sub} {}/{} → {} at {}",
            self.user,
            self.verb,
            self.resource,
            self.namespace,
            self.name,
            self.code,
            self.received
        )
    }
}

/// Follows `<state>/audit.log` from its current end in a thread of its own.
pub struct AuditTail {
    writes: Arc<Mutex<Vec<Write>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AuditTail {
    /// Starts following `path`, keeping the writes of `users`.
    pub fn start(path: PathBuf, users: Vec<String>) -> Self {
        Self::following(path, users, false)
    }

    /// Starts following `path`, keeping every request of `users`, reads included.
    pub fn start_all(path: PathBuf, users: Vec<String>) -> Self {
        Self::following(path, users, true)
    }

    fn following(path: PathBuf, users: Vec<String>, reads: bool) -> Self {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (writes, stop) = (writes.clone(), stop.clone());
            std::thread::spawn(move || follow(&path, &users, reads, &writes, &stop))
        };
        Self {
            writes,
            stop,
            thread: Some(thread),
        }
    }

    /// The writes seen so far, in the order the API server received them.
    pub fn writes(&self) -> Vec<Write> {
        let mut w = self.writes.lock().unwrap().clone();
        w.sort_by_key(|w| w.received);
        w
    }

    /// Reads what is left and stops.
    pub fn finish(mut self) -> Vec<Write> {
        // The API server writes its audit events asynchronously (batched).
        std::thread::sleep(Duration::from_secs(2));
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.writes()
    }
}

impl Drop for AuditTail {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn follow(
    path: &PathBuf,
    users: &[String],
    reads: bool,
    writes: &Mutex<Vec<Write>>,
    stop: &AtomicBool,
) {
    let needles: Vec<String> = users
        .iter()
        .map(|u| format!("\"username\":\"{u}\""))
        .collect();
    let mut file: Option<(BufReader<std::fs::File>, u64)> = None;
    let mut first = true;
    let mut partial = String::new();
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if file.is_none() {
            if let Ok(f) = std::fs::File::open(path) {
                let ino = f.metadata().map(|m| m.ino()).unwrap_or_default();
                let mut reader = BufReader::new(f);
                // The first file is read from its end: only the run's requests count.
                // Files that appear later (rotation) are read from their start.
                if first {
                    let _ = reader.seek(SeekFrom::End(0));
                }
                file = Some((reader, ino));
            }
            first = false;
        }
        let mut at_end = true;
        if let Some((reader, ino)) = file.as_mut() {
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        at_end = false;
                        if !line.ends_with('\n') {
                            // The rest of the line is not written yet.
                            partial.push_str(&line);
                            break;
                        }
                        let whole = if partial.is_empty() {
                            std::mem::take(&mut line)
                        } else {
                            partial.push_str(&line);
                            std::mem::take(&mut partial)
                        };
                        if needles.iter().any(|n| whole.contains(n.as_str()))
                            && let Some(w) = parse(&whole, reads)
                        {
                            writes.lock().unwrap().push(w);
                        }
                    }
                }
            }
            // Rotated (renamed away, a new file at the path): go on in the new one
            // once this one is read to its end.
            let current = std::fs::metadata(path).map(|m| m.ino()).ok();
            if at_end && current.is_some() && current != Some(*ino) {
                file = None;
                partial.clear();
                continue;
            }
        }
        if stopping && at_end {
            return;
        }
        if at_end {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn parse(line: &str, reads: bool) -> Option<Write> {
    let event: Value = serde_json::from_str(line).ok()?;
    let verb = event["verb"].as_str()?.to_string();
    if !reads && !WRITES.contains(&verb.as_str()) {
        return None;
    }
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    Some(Write {
        user: text(&event["user"]["username"]),
        verb,
        resource: text(&event["objectRef"]["resource"]),
        subresource: text(&event["objectRef"]["subresource"]),
        namespace: text(&event["objectRef"]["namespace"]),
        name: text(&event["objectRef"]["name"]),
        code: event["responseStatus"]["code"].as_i64().unwrap_or_default(),
        received: event["requestReceivedTimestamp"].as_str()?.parse().ok()?,
    })
}

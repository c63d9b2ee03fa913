//! The operator's two replicas, each under a user of its own (so the audit log
//! tells their writes apart), kept running as a Deployment would: a replica that
//! dies (killed, or exiting on its own once its fence is shut) is started again a
//! second later as a new pod would be, under a new identity.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a dead replica stays down before it is started again.
const RESTART_AFTER: Duration = Duration::from_secs(1);

/// One exit of a replica process.
#[derive(Clone, Debug)]
pub struct Exit {
    pub identity: String,
    pub at: jiff::Timestamp,
    /// Whether the runner killed it (SIGKILL); otherwise it exited on its own.
    pub killed: bool,
    pub status: String,
}

struct Replica {
    user: String,
    kubeconfig: PathBuf,
    log: PathBuf,
    letter: char,
    starts: u32,
    identity: String,
    child: Option<Child>,
    /// Set when the runner kills it, so the exit is told apart from one of its own.
    killing: bool,
    frozen: bool,
    down_since: Option<std::time::Instant>,
}

impl Replica {
    fn spawn(&mut self, binary: &PathBuf, tag: &str, in_place: bool) -> anyhow::Result<()> {
        self.starts += 1;
        self.identity = if in_place {
            format!("{tag}-{}", self.letter)
        } else {
            format!("{tag}-{}{}", self.letter, self.starts)
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(binary)
            .args(["run", "--http-addr", "127.0.0.1:0"])
            .args(["--lease-namespace", "default", "--identity", &self.identity])
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("POD_NAME")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        self.killing = false;
        self.frozen = false;
        self.down_since = None;
        Ok(())
    }
}

/// The replicas, their supervisor's state, and what happened to them.
pub struct Replicas {
    binary: PathBuf,
    tag: String,
    in_place: bool,
    inner: Mutex<Inner>,
}

struct Inner {
    replicas: Vec<Replica>,
    exits: Vec<Exit>,
    /// Every identity a replica ran as, and its user.
    identities: BTreeMap<String, String>,
    stopped: bool,
}

fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}

impl Replicas {
    /// Starts one replica per `(user, kubeconfig)`; their logs go to `log_dir`.
    /// `in_place`: a dead replica comes back under the same identity.
    pub fn start(
        binary: PathBuf,
        tag: &str,
        in_place: bool,
        users: &[(String, PathBuf)],
        log_dir: &std::path::Path,
    ) -> anyhow::Result<Arc<Self>> {
        let mut replicas = vec![];
        let mut identities = BTreeMap::new();
        for (i, (user, kubeconfig)) in users.iter().enumerate() {
            let letter = (b'a' + i as u8) as char;
            let mut r = Replica {
                user: user.clone(),
                kubeconfig: kubeconfig.clone(),
                log: log_dir.join(format!("{tag}-{letter}.log")),
                letter,
                starts: 0,
                identity: String::new(),
                child: None,
                killing: false,
                frozen: false,
                down_since: None,
            };
            r.spawn(&binary, tag, in_place)?;
            identities.insert(r.identity.clone(), r.user.clone());
            replicas.push(r);
        }
        Ok(Arc::new(Self {
            binary,
            tag: tag.to_string(),
            in_place,
            inner: Mutex::new(Inner {
                replicas,
                exits: vec![],
                identities,
                stopped: false,
            }),
        }))
    }

    /// Notes exits and starts dead replicas again; call it often (every 200 ms).
    pub fn supervise(&self) {
        let mut inner = self.inner.lock().unwrap();
        if inner.stopped {
            return;
        }
        let mut exits = vec![];
        let mut started = vec![];
        for r in inner.replicas.iter_mut() {
            if let Some(child) = r.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                exits.push(Exit {
                    identity: r.identity.clone(),
                    at: jiff::Timestamp::now(),
                    killed: r.killing,
                    status: status.to_string(),
                });
                r.child = None;
                r.down_since = Some(std::time::Instant::now());
            }
            if r.child.is_none() && r.down_since.is_some_and(|t| t.elapsed() >= RESTART_AFTER) {
                match r.spawn(&self.binary, &self.tag, self.in_place) {
                    Ok(()) => started.push((r.identity.clone(), r.user.clone())),
                    Err(e) => eprintln!("could not start replica {}: {e}", r.letter),
                }
            }
        }
        inner.exits.extend(exits);
        inner.identities.extend(started);
    }

    /// The user of the replica that runs or ran as `identity`.
    pub fn user_of(&self, identity: &str) -> Option<String> {
        self.inner.lock().unwrap().identities.get(identity).cloned()
    }

    /// Whether `identity` is a replica process running now (not frozen).
    pub fn is_live(&self, identity: &str) -> bool {
        let inner = self.inner.lock().unwrap();
        inner
            .replicas
            .iter()
            .any(|r| r.identity == identity && r.child.is_some() && !r.frozen && !r.killing)
    }

    fn with<T>(&self, identity: &str, f: impl FnOnce(&mut Replica) -> T) -> Option<T> {
        let mut inner = self.inner.lock().unwrap();
        inner
            .replicas
            .iter_mut()
            .find(|r| r.identity == identity && r.child.is_some())
            .map(f)
    }

    /// SIGKILLs the replica running as `identity`.
    pub fn kill(&self, identity: &str) -> anyhow::Result<()> {
        self.with(identity, |r| {
            r.killing = true;
            if r.frozen {
                let _ = signal(r.child.as_ref().unwrap().id(), "CONT");
            }
            r.child.as_mut().unwrap().kill()
        })
        .ok_or_else(|| anyhow::anyhow!("no replica runs as {identity}"))??;
        Ok(())
    }

    /// SIGSTOPs (`true`) or SIGCONTs (`false`) the replica running as `identity`.
    pub fn freeze(&self, identity: &str, frozen: bool) -> anyhow::Result<()> {
        self.with(identity, |r| {
            r.frozen = frozen;
            signal(
                r.child.as_ref().unwrap().id(),
                if frozen { "STOP" } else { "CONT" },
            )
        })
        .ok_or_else(|| anyhow::anyhow!("no replica runs as {identity}"))?
    }

    /// Exits seen so far.
    pub fn exits(&self) -> Vec<Exit> {
        self.inner.lock().unwrap().exits.clone()
    }

    /// Process starts per replica letter.
    pub fn starts(&self) -> BTreeMap<char, u32> {
        let inner = self.inner.lock().unwrap();
        inner
            .replicas
            .iter()
            .map(|r| (r.letter, r.starts))
            .collect()
    }

    /// Stops every replica (SIGTERM, a frozen one resumed first; SIGKILL after 30 s)
    /// and supervises no more.
    pub fn stop(&self) {
        let mut inner = self.inner.lock().unwrap();
        inner.stopped = true;
        for r in inner.replicas.iter_mut() {
            let Some(child) = r.child.as_mut() else {
                continue;
            };
            if r.frozen {
                let _ = signal(child.id(), "CONT");
            }
            let _ = signal(child.id(), "TERM");
        }
        for r in inner.replicas.iter_mut() {
            let Some(mut child) = r.child.take() else {
                continue;
            };
            for _ in 0..300 {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        self.stop();
    }
}

//! Which broker `mlops up` runs locally, and Apache Kafka as that broker.
//!
//! Two engines speak the Kafka protocol here. Apache Kafka (KRaft, one node, loopback) is
//! the default when Java 17+ is present: it holds the platform's load on two cores
//! (`load-tests/embedded.sh`). Tansu, in-process on SQLite, is the fallback that needs
//! nothing but this binary; its limits under load are written up in ARCHITECTURE.md.
//! `MLOPS_BROKER=kafka|tansu|auto` chooses; `auto` also keeps a data directory on the
//! engine whose data it already holds, so an upgrade never hides a user's bus.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// Kafka's broker and its runtime dependencies, as Maven resolves them.
const POM: &str = include_str!("../../../infra/kafka/pom.xml");
const MIN_JAVA: u32 = 17;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Engine {
    Kafka,
    Tansu,
}

impl Engine {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Kafka => "kafka",
            Self::Tansu => "tansu",
        }
    }
}

/// The engine to run and why, in words for the person who started it.
#[derive(Debug, Clone)]
pub(crate) struct Choice {
    pub(crate) engine: Engine,
    pub(crate) reason: String,
}

/// The Kafka version of `infra/kafka/pom.xml`.
pub(crate) fn version() -> &'static str {
    POM.split_once("<kafka.version>")
        .and_then(|(_, rest)| rest.split_once("</kafka.version>"))
        .map_or("unknown", |(version, _)| version.trim())
}

/// Where downloaded jars are kept, shared with `tests/kafka/kafka.sh`.
pub(crate) fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MLOPS_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".cache/mlops"))
        .unwrap_or_else(|| PathBuf::from(".mlops-cache"))
}

pub(crate) fn libs_dir() -> PathBuf {
    cache_dir()
        .join(format!("kafka-{}", version()))
        .join("libs")
}

/// Complete, and resolved from this binary's pom (kept beside the jars).
pub(crate) fn provisioned(libs: &Path) -> bool {
    let pom = libs.with_file_name("pom.xml");
    libs.join(format!("kafka_2.13-{}.jar", version())).is_file()
        && std::fs::read_to_string(pom).is_ok_and(|kept| kept == POM)
}

/// The major version of the `java` on PATH, if there is one.
fn java_major() -> Option<u32> {
    let output = Command::new("java")
        .arg("-version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    // `openjdk version "17.0.15" 2025-04-15` (or "1.8.0_392" before Java 9), on stderr.
    let text = String::from_utf8_lossy(&output.stderr);
    let quoted = text.split('"').nth(1)?;
    let mut parts = quoted.split(['.', '-', '+', '_']);
    match parts.next()?.parse().ok()? {
        1 => parts.next()?.parse().ok(),
        major => Some(major),
    }
}

pub(crate) fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Chooses the engine for the broker whose data lives in `broker_dir`.
pub(crate) fn choose(broker_dir: &Path) -> Result<Choice, String> {
    let wanted = std::env::var("MLOPS_BROKER").unwrap_or_default();
    let choice = |engine, reason: &str| {
        Ok(Choice {
            engine,
            reason: reason.to_owned(),
        })
    };
    match wanted.trim() {
        "tansu" => choice(Engine::Tansu, "MLOPS_BROKER=tansu"),
        "kafka" => match kafka_unavailable() {
            None => choice(Engine::Kafka, "MLOPS_BROKER=kafka"),
            Some(why) => Err(format!("MLOPS_BROKER=kafka, but {why}")),
        },
        "" | "auto" => {
            if broker_dir.join("tansu.db").exists() && !broker_dir.join("kafka").exists() {
                return choice(
                    Engine::Tansu,
                    "this data directory holds a Tansu bus (MLOPS_BROKER=kafka with a new MLOPS_DATA_DIR to move)",
                );
            }
            match kafka_unavailable() {
                None => choice(Engine::Kafka, "Java found"),
                Some(why) => Ok(Choice {
                    engine: Engine::Tansu,
                    reason: format!(
                        "{why}; Tansu ingests about 60% of Apache Kafka's rate here, see README"
                    ),
                }),
            }
        }
        other => Err(format!(
            "MLOPS_BROKER must be auto, kafka or tansu, not {other:?}"
        )),
    }
}

/// Why Apache Kafka cannot run here, or `None` when it can (its jars may still need fetching).
fn kafka_unavailable() -> Option<String> {
    match java_major() {
        None => {
            return Some(format!(
                "no Java on PATH (Apache Kafka needs Java {MIN_JAVA}+)"
            ));
        }
        Some(major) if major < MIN_JAVA => {
            return Some(format!(
                "Java {major} on PATH, Apache Kafka needs {MIN_JAVA}+"
            ));
        }
        Some(_) => {}
    }
    if !provisioned(&libs_dir()) && !on_path("mvn") {
        return Some(format!(
            "Apache Kafka's jars are not in {} and Maven is not on PATH to fetch them",
            libs_dir().display()
        ));
    }
    None
}

/// Makes sure Kafka's jars are in the cache, fetching them from Maven Central once.
pub(crate) fn provision() -> Result<PathBuf, String> {
    let libs = libs_dir();
    if provisioned(&libs) {
        return Ok(libs);
    }
    let home = libs
        .parent()
        .ok_or_else(|| format!("{}: no parent directory", libs.display()))?;
    std::fs::create_dir_all(home).map_err(|e| format!("{}: {e}", home.display()))?;
    let pom = home.join("pom.xml.resolving");
    std::fs::write(&pom, POM).map_err(|e| format!("{}: {e}", pom.display()))?;
    // Into a fresh directory renamed at the end: an interrupted download is never taken
    // for a complete one.
    let partial = home.join("libs.partial");
    let _ = std::fs::remove_dir_all(&partial);
    let status = Command::new("mvn")
        .args(["-q", "-B", "-f"])
        .arg(&pom)
        .args(["dependency:copy-dependencies", "-DincludeScope=runtime"])
        .arg(format!("-DoutputDirectory={}", partial.display()))
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("running mvn: {e}"))?;
    if !status.success() {
        return Err(format!(
            "mvn could not fetch Apache Kafka {} ({status})",
            version()
        ));
    }
    let _ = std::fs::remove_dir_all(&libs);
    std::fs::rename(&partial, &libs).map_err(|e| format!("{}: {e}", libs.display()))?;
    std::fs::rename(&pom, home.join("pom.xml")).map_err(|e| format!("{}: {e}", home.display()))?;
    Ok(libs)
}

/// One local Kafka node's files: configuration, and its log directories under `data/`.
pub(crate) struct Node {
    pub(crate) dir: PathBuf,
    pub(crate) libs: PathBuf,
}

impl Node {
    /// Writes the configuration for these ports and formats the storage on first use.
    pub(crate) fn prepare(&self, port: u16, controller_port: u16) -> Result<(), String> {
        let io = |path: &Path, e: std::io::Error| format!("{}: {e}", path.display());
        std::fs::create_dir_all(&self.dir).map_err(|e| io(&self.dir, e))?;
        let data = self.dir.join("data");
        // Loopback only, one node acting as broker and controller. Retention is unlimited:
        // locally the bus is the system of record, as the embedded Tansu bus is, and
        // records carry event times that a time-based retention would expire at once.
        let properties = format!(
            "process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data}
log.retention.ms=-1
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
",
            data = data.display()
        );
        let config = self.config();
        std::fs::write(&config, properties).map_err(|e| io(&config, e))?;
        // Kafka's own log lines at WARN and above go to the broker's log file.
        let log4j = self.dir.join("log4j2.properties");
        std::fs::write(
            &log4j,
            "appender.out.type = Console\nappender.out.name = out\n\
             appender.out.layout.type = PatternLayout\n\
             appender.out.layout.pattern = [%d] %p %m (%c)%n\n\
             rootLogger.level = warn\nrootLogger.appenderRef.out.ref = out\n\
             logger.started.name = kafka.server.KafkaRaftServer\nlogger.started.level = info\n",
        )
        .map_err(|e| io(&log4j, e))?;
        if data.join("meta.properties").exists() {
            return Ok(());
        }
        let cluster_id = self.tool(&["random-uuid"])?;
        let cluster_id = cluster_id
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_owned();
        self.tool(&[
            "format",
            "-t",
            &cluster_id,
            "-c",
            &config.display().to_string(),
        ])
        .map(|_| ())
    }

    /// Where the running JVM's pid is kept, so that a restarted `mlops broker` can stop
    /// one left behind: two Kafka processes on one log directory corrupt it (seen when
    /// `mlops broker` was killed outright on a machine without `setpriv`).
    pub(crate) fn pid_file(&self) -> PathBuf {
        self.dir.join("jvm.pid")
    }

    /// Stops a JVM still running this node from an earlier `mlops broker`, gracefully
    /// first. Blocking: called before anything else starts.
    pub(crate) fn stop_leftover(&self) {
        use nix::{sys::signal::Signal, unistd::Pid};
        let Some(pid) = std::fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|text| text.trim().parse::<i32>().ok())
        else {
            return;
        };
        let config = self.config().display().to_string();
        let runs_this_node = || {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                cmdline
                    .split(|b| *b == 0)
                    .any(|arg| arg == config.as_bytes())
            }) && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(") ")
                    .is_some_and(|(_, r)| r.starts_with('Z'))
            })
        };
        if !runs_this_node() {
            return;
        }
        eprintln!("broker: stopping Apache Kafka left running by an earlier start (pid {pid})");
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while runs_this_node() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        if runs_this_node() {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }

    fn config(&self) -> PathBuf {
        self.dir.join("server.properties")
    }

    /// The JVM's arguments before the main class: a small heap suits one local node.
    pub(crate) fn java_args(&self) -> Vec<String> {
        vec![
            "-Xms256m".to_owned(),
            "-Xmx1g".to_owned(),
            "-XX:+UseSerialGC".to_owned(),
            "-XX:+ExitOnOutOfMemoryError".to_owned(),
            "-Djava.awt.headless=true".to_owned(),
            format!(
                "-Dlog4j2.configurationFile={}",
                self.dir.join("log4j2.properties").display()
            ),
            "-cp".to_owned(),
            format!("{}/*", self.libs.display()),
        ]
    }

    /// `kafka.Kafka <config>`: the arguments that run the node.
    pub(crate) fn server_args(&self) -> Vec<String> {
        let mut args = self.java_args();
        args.push("kafka.Kafka".to_owned());
        args.push(self.config().display().to_string());
        args
    }

    fn tool(&self, args: &[&str]) -> Result<String, String> {
        let output = Command::new("java")
            .args(self.java_args())
            .arg("kafka.tools.StorageTool")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running java: {e}"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(format!(
                "kafka-storage {}: {}{}",
                args.first().unwrap_or(&""),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kafka_version_is_read_from_the_pom() {
        let version = version();
        assert!(
            version.split('.').count() == 3 && version.split('.').all(|p| p.parse::<u32>().is_ok()),
            "{version}"
        );
    }

    #[test]
    fn a_data_directory_holding_a_tansu_bus_stays_on_tansu() {
        let dir = std::env::temp_dir().join(format!("mlops-engine-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tansu.db"), b"").unwrap();
        // Only `auto` (the default) looks at the data; the test reads MLOPS_BROKER as set.
        if std::env::var("MLOPS_BROKER").is_err() {
            let choice = choose(&dir).unwrap();
            assert_eq!(choice.engine, Engine::Tansu, "{}", choice.reason);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

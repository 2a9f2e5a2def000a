//! CPU time of the processes a broker bench involves (this one, the broker, the database
//! server), read from `/proc`: on a machine where they share two cores, the time each spends
//! per message says what limits a ratio better than the rate alone.

/// Clock ticks a second of `/proc/<pid>/stat` (`getconf CLK_TCK`; 100 on every Linux we run).
const TICKS: f64 = 100.0;

/// Seconds of CPU (user + system, all threads) used so far by this process, by every process
/// named `broker`, and by every process named `database` (PostgreSQL runs a process per
/// connection, all named `postgres`; `None` for SQLite, which runs in this process). Zero where
/// `/proc` cannot be read (not Linux).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cpu {
    pub(crate) bench: f64,
    pub(crate) broker: f64,
    pub(crate) database: f64,
}

impl Cpu {
    pub(crate) fn now(broker: &str, database: Option<&str>) -> Self {
        let mut cpu = Cpu {
            bench: std::fs::read_to_string("/proc/self/stat")
                .ok()
                .and_then(|s| parse(&s))
                .map_or(0.0, |(_, t)| t),
            ..Cpu::default()
        };
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return cpu;
        };
        for entry in dir.flatten() {
            if !entry
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
            {
                continue;
            }
            // A process may end between the listing and the read: skip it.
            let Some((comm, secs)) = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|s| parse(&s))
            else {
                continue;
            };
            if comm == broker {
                cpu.broker += secs;
            } else if Some(comm.as_str()) == database {
                cpu.database += secs;
            }
        }
        cpu
    }

    /// What was used between `self` and the later sample `end`. A database process that ended
    /// in between takes its time with it; the benches keep their pools open until after `end`.
    pub(crate) fn until(self, end: Cpu) -> Cpu {
        Cpu {
            bench: end.bench - self.bench,
            broker: (end.broker - self.broker).max(0.0),
            database: (end.database - self.database).max(0.0),
        }
    }

    pub(crate) fn add(&mut self, other: Cpu) {
        self.bench += other.bench;
        self.broker += other.broker;
        self.database += other.database;
    }
}

/// The command name and user + system seconds of a `/proc/<pid>/stat` line. The name is in
/// parentheses and may hold spaces, so fields are counted from the last `)`.
fn parse(stat: &str) -> Option<(String, f64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 2..)?.split(' ').collect();
    // Fields 14 and 15 of proc(5) (utime, stime); the state, field 3, is fields[0].
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((comm, (utime + stime) / TICKS))
}

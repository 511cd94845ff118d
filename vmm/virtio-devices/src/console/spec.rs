//! The `--console port=N,path=FILE|socket=PATH|stdout|none[,name=NAME]` option: parsed here so
//! the VMM's command line and JSON config share one validator.

use std::path::PathBuf;
use std::str::FromStr;

use super::{PortBackend, PortConfig, MAX_PORTS};

/// Longest port name accepted (the guest shows it in sysfs; keep it a short label).
pub const MAX_NAME_LEN: usize = 64;

/// One `--console` option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleSpec {
    /// Port number (hvcN in the guest).
    pub port: usize,
    /// The port's configuration (always announced as a console).
    pub config: PortConfig,
}

/// Why a `--console` option or set of options is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// A key is unknown or malformed.
    #[error("--console {spec:?}: unknown or malformed item {item:?}; expected port=N,path=FILE|socket=PATH|stdout|none[,name=NAME]")]
    Item { spec: String, item: String },
    /// `port=N` is missing or out of range.
    #[error("--console {spec:?}: needs port=N with N in 0..{MAX_PORTS}")]
    Port { spec: String },
    /// Zero or several backends.
    #[error("--console {spec:?}: give exactly one of path=FILE, socket=PATH, stdout, none")]
    Backend { spec: String },
    /// The name is empty, too long or not printable ASCII.
    #[error("--console {spec:?}: name must be 1..={MAX_NAME_LEN} printable ASCII characters without spaces")]
    Name { spec: String },
    /// Two options for the same port.
    #[error("--console port={0} given twice; each port may be configured once")]
    Duplicate(usize),
}

impl FromStr for ConsoleSpec {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, SpecError> {
        let mut port = None;
        let mut backends = Vec::new();
        let mut name = None;
        for item in spec.split(',') {
            let bad_item = || SpecError::Item {
                spec: spec.to_string(),
                item: item.to_string(),
            };
            match item.split_once('=') {
                Some(("port", n)) => {
                    port = Some(n.parse::<usize>().map_err(|_| SpecError::Port {
                        spec: spec.to_string(),
                    })?)
                }
                Some(("path", p)) if !p.is_empty() => {
                    backends.push(PortBackend::File(PathBuf::from(p)))
                }
                Some(("socket", p)) if !p.is_empty() => {
                    backends.push(PortBackend::Socket(PathBuf::from(p)))
                }
                Some(("name", n)) => name = Some(n.to_string()),
                None if item == "stdout" => backends.push(PortBackend::Stdout),
                None if item == "none" => backends.push(PortBackend::None),
                _ => return Err(bad_item()),
            }
        }
        let port = port
            .filter(|p| *p < MAX_PORTS)
            .ok_or_else(|| SpecError::Port {
                spec: spec.to_string(),
            })?;
        if backends.len() != 1 {
            return Err(SpecError::Backend {
                spec: spec.to_string(),
            });
        }
        let name_ok = |n: &String| {
            !n.is_empty() && n.len() <= MAX_NAME_LEN && n.bytes().all(|b| b.is_ascii_graphic())
        };
        if name.as_ref().is_some_and(|n| !name_ok(n)) {
            return Err(SpecError::Name {
                spec: spec.to_string(),
            });
        }
        Ok(Self {
            port,
            config: PortConfig {
                backend: backends.remove(0),
                name,
                console: true,
            },
        })
    }
}

/// The port list for [`Console::new`](super::Console::new): ports in order, gaps (ports not
/// mentioned) as consoles with no backend, so hvcN numbering matches the options.
pub fn ports_from_specs(specs: &[ConsoleSpec]) -> Result<Vec<PortConfig>, SpecError> {
    let count = specs.iter().map(|s| s.port + 1).max().unwrap_or(0);
    let mut ports: Vec<Option<PortConfig>> = vec![None; count];
    for spec in specs {
        if ports[spec.port].replace(spec.config.clone()).is_some() {
            return Err(SpecError::Duplicate(spec.port));
        }
    }
    Ok(ports
        .into_iter()
        .map(|p| {
            p.unwrap_or(PortConfig {
                backend: PortBackend::None,
                name: None,
                console: true,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_backend() {
        let s: ConsoleSpec = "port=2,socket=/run/p/logcat.sock,name=logcat"
            .parse()
            .unwrap();
        assert_eq!(s.port, 2);
        assert_eq!(
            s.config.backend,
            PortBackend::Socket("/run/p/logcat.sock".into())
        );
        assert_eq!(s.config.name.as_deref(), Some("logcat"));
        let s: ConsoleSpec = "port=0,stdout".parse().unwrap();
        assert_eq!(s.config.backend, PortBackend::Stdout);
        let s: ConsoleSpec = "port=1,path=/tmp/kmsg".parse().unwrap();
        assert_eq!(s.config.backend, PortBackend::File("/tmp/kmsg".into()));
        let s: ConsoleSpec = "none,port=3".parse().unwrap();
        assert_eq!(s.config.backend, PortBackend::None);
    }

    #[test]
    fn rejects_bad_options_naming_them() {
        let err = |s: &str| s.parse::<ConsoleSpec>().unwrap_err();
        assert!(matches!(err("stdout"), SpecError::Port { .. }));
        assert!(matches!(err("port=64,stdout"), SpecError::Port { .. }));
        assert!(matches!(err("port=x,stdout"), SpecError::Port { .. }));
        assert!(matches!(err("port=0"), SpecError::Backend { .. }));
        assert!(matches!(
            err("port=0,stdout,none"),
            SpecError::Backend { .. }
        ));
        assert!(matches!(err("port=0,path="), SpecError::Item { .. }));
        assert!(matches!(
            err("port=0,stdout,speed=9600"),
            SpecError::Item { .. }
        ));
        assert!(matches!(
            err("port=0,stdout,name=a b"),
            SpecError::Name { .. }
        ));
        assert!(matches!(err("port=0,stdout,name="), SpecError::Name { .. }));
        let long = format!("port=0,stdout,name={}", "n".repeat(65));
        assert!(matches!(err(&long), SpecError::Name { .. }));
        assert!(err("port=0,bogus").to_string().contains("\"bogus\""));
    }

    #[test]
    fn fills_gaps_and_rejects_duplicates() {
        let specs: Vec<ConsoleSpec> = ["port=2,stdout", "port=0,none"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let ports = ports_from_specs(&specs).unwrap();
        assert_eq!(ports.len(), 3);
        assert_eq!(ports[1].backend, PortBackend::None);
        assert_eq!(ports[2].backend, PortBackend::Stdout);
        assert!(ports.iter().all(|p| p.console));
        let dup: Vec<ConsoleSpec> = ["port=1,stdout", "port=1,none"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(ports_from_specs(&dup), Err(SpecError::Duplicate(1)));
        assert_eq!(ports_from_specs(&[]), Ok(Vec::new()));
    }
}

//! The services a client may OPEN: `shell[,v2,...]:cmd`, `exec:cmd`, `sync:`, `reboot:[arg]`.
//! Anything else is refused with CLSE by the caller.

use std::io::Write;
use std::sync::Arc;

use super::stream::{StreamReader, StreamWriter};
use super::{exec, files, Config};

/// A parsed OPEN target.
#[derive(Debug, PartialEq, Eq)]
pub enum Service {
    /// `shell:` (raw, stderr merged) or `shell,v2,...:` (framed, exit code); empty command =
    /// an interactive `sh` without a terminal.
    Shell { command: String, v2: bool },
    /// `exec:cmd`: raw stdout only, for binary output (`adb exec-out screencap -p`).
    Exec(String),
    /// `sync:`: push, pull, stat and list.
    Sync,
    /// `reboot:` (any argument): sync the disks and restart the phone.
    Reboot,
}

impl Service {
    /// Parses a service name; None for services we do not offer.
    pub fn parse(name: &str) -> Option<Service> {
        let (head, rest) = name.split_once(':')?;
        let mut options = head.split(',');
        match options.next()? {
            "shell" => Some(Service::Shell {
                command: rest.to_string(),
                v2: options.any(|o| o == "v2"),
            }),
            "exec" if head == "exec" => Some(Service::Exec(rest.to_string())),
            "sync" if head == "sync" && rest.is_empty() => Some(Service::Sync),
            "reboot" if head == "reboot" => Some(Service::Reboot),
            _ => None,
        }
    }
}

/// Runs a service to its end; dropping the writer closes the stream.
pub fn run(service: Service, reader: StreamReader, mut writer: StreamWriter, config: &Arc<Config>) {
    let result = match service {
        Service::Shell { command, v2 } => {
            let framing = if v2 {
                exec::Framing::ShellV2
            } else {
                exec::Framing::Merged
            };
            exec::run(&command, framing, reader, writer, config)
        }
        Service::Exec(command) => {
            exec::run(&command, exec::Framing::StdoutOnly, reader, writer, config)
        }
        Service::Sync => files::serve(reader, &mut writer, &config.roots),
        Service::Reboot => {
            let _ = writer.flush();
            config.phone.reboot()
        }
    };
    if let Err(e) = result {
        tracing::debug!("adbd service ended: {e:#}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_adb_29_opens() {
        assert_eq!(
            Service::parse("shell,v2,TERM=xterm-256color,raw:echo hi"),
            Some(Service::Shell {
                command: "echo hi".into(),
                v2: true
            })
        );
        assert_eq!(
            Service::parse("shell:"),
            Some(Service::Shell {
                command: String::new(),
                v2: false
            })
        );
        assert_eq!(
            Service::parse("exec:screencap -p"),
            Some(Service::Exec("screencap -p".into()))
        );
        assert_eq!(Service::parse("sync:"), Some(Service::Sync));
        assert_eq!(Service::parse("reboot:bootloader"), Some(Service::Reboot));
        for unknown in [
            "jdwp:1",
            "tcpip:5555",
            "sync:x",
            "exec,v2:x",
            "reverse:list",
            "nonsense",
        ] {
            assert_eq!(Service::parse(unknown), None, "{unknown}");
        }
    }
}

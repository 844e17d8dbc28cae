//! Starting the daemon at login: a systemd user unit (Linux) or a launchd
//! agent (macOS).
//!
//! [`ServiceFile::new`] renders the file for a [`ServiceKind`]; both run
//! `sam --home HOME schedule start --foreground` and leave stopping to the
//! service manager's SIGTERM, which the daemon answers by checkpointing a
//! running training and exiting 0. The unit restarts the daemon when it
//! fails (not when it was stopped), runs it at a lower CPU and I/O
//! priority, and gives it two minutes to stop.
//!
//! ```
//! use sam_scheduler::units::{ServiceFile, ServiceKind, ServiceSpec};
//! let spec = ServiceSpec { exe: "/usr/bin/sam".into(), home: "/home/ada/.sam".into(), log: "/home/ada/.sam/scheduler/daemon.log".into() };
//! let unit = ServiceFile::new(ServiceKind::Systemd, &spec);
//! assert!(unit.text.contains("ExecStart=\"/usr/bin/sam\" --home \"/home/ada/.sam\" schedule start --foreground"));
//! ```

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Which service manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceKind {
    /// A systemd user unit, `~/.config/systemd/user/sam-scheduler.service`.
    Systemd,
    /// A launchd agent, `~/Library/LaunchAgents/dev.sam.scheduler.plist`.
    Launchd,
}

/// The systemd unit's file name.
pub const SYSTEMD_UNIT: &str = "sam-scheduler.service";
/// The launchd agent's label (its file is `<label>.plist`).
pub const LAUNCHD_LABEL: &str = "dev.sam.scheduler";

impl ServiceKind {
    /// This platform's service manager: launchd on macOS, systemd elsewhere.
    pub fn native() -> Self {
        if cfg!(target_os = "macos") { ServiceKind::Launchd } else { ServiceKind::Systemd }
    }

    /// Where the file goes for the user whose home folder is `user_home`
    /// (`config_home`: `$XDG_CONFIG_HOME` when set, for systemd).
    pub fn default_path(self, user_home: &Path, config_home: Option<&Path>) -> PathBuf {
        match self {
            ServiceKind::Systemd => config_home
                .map_or_else(|| user_home.join(".config"), Path::to_path_buf)
                .join("systemd/user")
                .join(SYSTEMD_UNIT),
            ServiceKind::Launchd => user_home.join("Library/LaunchAgents").join(format!("{LAUNCHD_LABEL}.plist")),
        }
    }
}

/// What the service runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// The `sam` binary.
    pub exe: PathBuf,
    /// `SAM_HOME`.
    pub home: PathBuf,
    /// Where launchd writes the daemon's output (systemd keeps it in the journal).
    pub log: PathBuf,
}

/// A rendered service file and the commands that turn it on and off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceFile {
    /// Which service manager.
    pub kind: ServiceKind,
    /// The file's text.
    pub text: String,
    /// Commands that load and start it, given the path it was written to
    /// (`{path}` stands for it).
    pub enable: Vec<String>,
    /// Commands that stop and unload it.
    pub disable: Vec<String>,
}

impl ServiceFile {
    /// The file for `kind` running `spec`.
    pub fn new(kind: ServiceKind, spec: &ServiceSpec) -> Self {
        match kind {
            ServiceKind::Systemd => Self {
                kind,
                text: systemd_unit(spec),
                enable: vec![
                    "systemctl --user daemon-reload".into(),
                    format!("systemctl --user enable --now {SYSTEMD_UNIT}"),
                ],
                disable: vec![format!("systemctl --user disable --now {SYSTEMD_UNIT}")],
            },
            ServiceKind::Launchd => Self {
                kind,
                text: launchd_plist(spec),
                enable: vec!["launchctl bootstrap gui/$(id -u) {path}".into()],
                disable: vec![format!("launchctl bootout gui/$(id -u)/{LAUNCHD_LABEL}")],
            },
        }
    }

    /// The enable commands with `{path}` filled in.
    pub fn enable_commands(&self, path: &Path) -> Vec<String> {
        self.enable.iter().map(|c| c.replace("{path}", &shell_quote(&path.to_string_lossy()))).collect()
    }
}

/// The systemd user unit.
pub fn systemd_unit(spec: &ServiceSpec) -> String {
    let exec = format!(
        "{} --home {} schedule start --foreground",
        systemd_quote(&spec.exe.to_string_lossy()),
        systemd_quote(&spec.home.to_string_lossy())
    );
    format!(
        "# Written by `sam schedule install`; `sam schedule uninstall` removes it.\n\
         [Unit]\n\
         Description=sam scheduler: mining, cleaning, export and training of LoRA adapters\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart={exec}\n\
         # SIGTERM: a running training checkpoints, then the daemon exits 0.\n\
         KillSignal=SIGTERM\n\
         TimeoutStopSec=120\n\
         Restart=on-failure\n\
         RestartSec=30\n\
         Nice=10\n\
         IOSchedulingClass=idle\n\
         \n\
         [Install]\n\
         WantedBy=default.target\n"
    )
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Plist {
    label: &'static str,
    program_arguments: Vec<String>,
    run_at_load: bool,
    keep_alive: KeepAlive,
    process_type: &'static str,
    #[serde(rename = "LowPriorityIO")]
    low_priority_io: bool,
    nice: i64,
    exit_time_out: i64,
    standard_out_path: String,
    standard_error_path: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct KeepAlive {
    successful_exit: bool,
}

/// The launchd agent's property list (XML).
pub fn launchd_plist(spec: &ServiceSpec) -> String {
    let lossy = |p: &Path| p.to_string_lossy().into_owned();
    let plist = Plist {
        label: LAUNCHD_LABEL,
        program_arguments: vec![
            lossy(&spec.exe),
            "--home".into(),
            lossy(&spec.home),
            "schedule".into(),
            "start".into(),
            "--foreground".into(),
        ],
        run_at_load: true,
        // Restart after a failure, not after `sam schedule stop`.
        keep_alive: KeepAlive { successful_exit: false },
        process_type: "Background",
        low_priority_io: true,
        nice: 10,
        exit_time_out: 120,
        standard_out_path: lossy(&spec.log),
        standard_error_path: lossy(&spec.log),
    };
    let mut out = Vec::new();
    plist::to_writer_xml(&mut out, &plist).expect("a plist of strings, booleans and integers always serialises");
    let mut text = String::from_utf8(out).expect("plist XML is UTF-8");
    text.push('\n');
    text
}

/// Quote one ExecStart word: double quotes, C escapes, `%` and `$` doubled
/// (systemd expands specifiers and variables inside quotes too).
fn systemd_quote(word: &str) -> String {
    let mut q = String::with_capacity(word.len() + 2);
    q.push('"');
    for c in word.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '%' => q.push_str("%%"),
            '$' => q.push_str("$$"),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

fn shell_quote(s: &str) -> String {
    if s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_start_words_are_quoted_for_systemd() {
        assert_eq!(systemd_quote("/a b/100%/$HOME/\"x\""), "\"/a b/100%%/$$HOME/\\\"x\\\"\"");
        assert_eq!(shell_quote("/Users/ada/Library/x.plist"), "/Users/ada/Library/x.plist");
        assert_eq!(shell_quote("/Users/a b/x"), "'/Users/a b/x'");
    }

    fn spec() -> ServiceSpec {
        // An executable that exists, as systemd-analyze checks.
        let exe = std::env::current_exe().unwrap();
        ServiceSpec {
            exe,
            home: "/home/ada/my sam/100%".into(),
            log: "/home/ada/my sam/100%/scheduler/daemon.log".into(),
        }
    }

    #[test]
    fn the_systemd_unit_passes_systemd_analyze_verify_or_has_its_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = ServiceFile::new(ServiceKind::Systemd, &spec());
        let path = dir.path().join(SYSTEMD_UNIT);
        std::fs::write(&path, &file.text).unwrap();
        let analyze = std::process::Command::new("systemd-analyze").arg("verify").arg(&path).output();
        match analyze {
            Ok(out) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert!(out.status.success(), "systemd-analyze verify: {stderr}");
                // Unknown keys and bad values are warnings, not failures: none allowed.
                assert!(stderr.trim().is_empty(), "systemd-analyze verify warned: {stderr}");
            }
            Err(e) => eprintln!("systemd-analyze not available ({e}); checking the keys only"),
        }
        let mut section = "";
        let mut keys = Vec::new();
        for line in file.text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            if line.starts_with('[') {
                section = line;
            } else {
                let (k, v) = line.split_once('=').expect("key=value");
                keys.push((section, k, v));
            }
        }
        let get = |s: &str, k: &str| keys.iter().find(|(a, b, _)| *a == s && *b == k).map(|x| x.2);
        let exe = spec().exe.display().to_string();
        assert_eq!(
            get("[Service]", "ExecStart"),
            Some(format!("\"{exe}\" --home \"/home/ada/my sam/100%%\" schedule start --foreground").as_str())
        );
        assert_eq!(get("[Service]", "Restart"), Some("on-failure"));
        assert_eq!(get("[Service]", "KillSignal"), Some("SIGTERM"));
        assert_eq!(get("[Install]", "WantedBy"), Some("default.target"));
        assert!(get("[Unit]", "Description").is_some());
        assert_eq!(file.enable[1], "systemctl --user enable --now sam-scheduler.service");
    }

    #[test]
    fn the_launchd_agent_parses_as_an_xml_property_list() {
        let file = ServiceFile::new(ServiceKind::Launchd, &spec());
        assert!(file.text.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE plist PUBLIC"));
        let v = plist::Value::from_reader_xml(file.text.as_bytes()).expect("a valid XML plist");
        let d = v.as_dictionary().expect("a dictionary at the top");
        assert_eq!(d.get("Label").and_then(|l| l.as_string()), Some(LAUNCHD_LABEL));
        let args: Vec<&str> = d
            .get("ProgramArguments")
            .and_then(|a| a.as_array())
            .unwrap()
            .iter()
            .map(|s| s.as_string().unwrap())
            .collect();
        let exe = spec().exe.display().to_string();
        assert_eq!(args, [exe.as_str(), "--home", "/home/ada/my sam/100%", "schedule", "start", "--foreground"]);
        assert_eq!(d.get("RunAtLoad").and_then(|b| b.as_boolean()), Some(true));
        let keep = d.get("KeepAlive").and_then(|k| k.as_dictionary()).unwrap();
        assert_eq!(keep.get("SuccessfulExit").and_then(|b| b.as_boolean()), Some(false));
        for key in ["LowPriorityIO", "ProcessType", "ExitTimeOut", "StandardOutPath", "StandardErrorPath", "Nice"] {
            assert!(d.contains_key(key), "{key} missing");
        }
        let path = Path::new("/Users/ada/Library/LaunchAgents/dev.sam.scheduler.plist");
        assert_eq!(
            file.enable_commands(path),
            ["launchctl bootstrap gui/$(id -u) /Users/ada/Library/LaunchAgents/dev.sam.scheduler.plist"]
        );
    }

    #[test]
    fn default_paths() {
        let home = Path::new("/home/ada");
        assert_eq!(
            ServiceKind::Systemd.default_path(home, None),
            Path::new("/home/ada/.config/systemd/user/sam-scheduler.service")
        );
        assert_eq!(
            ServiceKind::Systemd.default_path(home, Some(Path::new("/cfg"))),
            Path::new("/cfg/systemd/user/sam-scheduler.service")
        );
        assert_eq!(
            ServiceKind::Launchd.default_path(home, None),
            Path::new("/home/ada/Library/LaunchAgents/dev.sam.scheduler.plist")
        );
    }
}

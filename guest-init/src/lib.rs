//! The parts of flint's guest init that are plain data handling, kept in a
//! library so the host side (`container`) can test that what it writes is
//! what the guest reads.
//!
//! The init reads its per-run settings from the second virtio drive
//! (`/dev/vdb`): a JSON object, padded with NUL bytes to a multiple of 4 KiB,
//! followed by one 4 KiB *status block* where the init records the command's
//! exit status before it reboots (see [`status_record`]). The init is linked
//! statically; the settings drive keeps its own minimal JSON reader (the
//! agent's protocol, in `agent_protocol`, uses serde).
//!
//! The init has two modes: *run* (one command, then reboot with its status)
//! and *agent* (serve flint's guest agent on vsock, see [`agent`]), chosen
//! by the settings' `"mode"` or the kernel command-line word `flint.agent=1`.

pub mod agent;
pub mod json;

use json::Value;

/// Where the host puts the settings drive.
pub const SETTINGS_DEVICE: &str = "/dev/vdb";

/// The settings format version the host writes and the init understands.
pub const SETTINGS_VERSION: u64 = 1;

/// Size of the status block at the end of the settings drive (and the unit
/// the settings JSON is padded to).
pub const BLOCK_SIZE: usize = 4096;

const STATUS_MAGIC: &str = "flint-exit-status ";

/// The status block recording exit status `code`.
pub fn status_record(code: u8) -> Vec<u8> {
    let mut block = format!("{STATUS_MAGIC}{code}\n").into_bytes();
    block.resize(BLOCK_SIZE, 0);
    block
}

/// The exit status recorded in a status block, if the init wrote one.
pub fn parse_status_record(block: &[u8]) -> Option<u8> {
    let end = block.iter().position(|&b| b == 0).unwrap_or(block.len());
    let text = std::str::from_utf8(&block[..end]).ok()?;
    text.strip_prefix(STATUS_MAGIC)?
        .strip_suffix('\n')?
        .parse()
        .ok()
}

/// What the init does once the guest is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Run `args`, report its exit status, reboot (`"mode": "run"`, the
    /// default).
    Run,
    /// Serve the guest agent until asked to shut down (`"mode": "agent"`).
    Agent,
}

/// The kernel command-line word that selects agent mode without settings.
pub const AGENT_CMDLINE_WORD: &str = "flint.agent=1";
/// The kernel command-line prefix of the agent's vsock port.
pub const AGENT_PORT_CMDLINE: &str = "flint.agent_port=";

/// Agent mode and port as the kernel command line asks: `Some(port)` when
/// it holds [`AGENT_CMDLINE_WORD`].
pub fn agent_from_cmdline(cmdline: &str) -> Option<u32> {
    let words: Vec<&str> = cmdline.split_whitespace().collect();
    if !words.contains(&AGENT_CMDLINE_WORD) {
        return None;
    }
    let port = words
        .iter()
        .find_map(|w| w.strip_prefix(AGENT_PORT_CMDLINE)?.parse().ok());
    Some(port.unwrap_or(agent_protocol::DEFAULT_PORT))
}

/// What to run in the guest, as the host decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Run one command, or serve the agent.
    pub mode: Mode,
    /// The agent's vsock port (`"agent_port"`, default 1024).
    pub agent_port: u32,
    /// argv; `args[0]` is looked up in `PATH` when it has no `/`. May be
    /// empty in agent mode, which ignores it (the host starts processes
    /// with `Exec` requests).
    pub args: Vec<String>,
    /// The complete environment, `KEY=VALUE`.
    pub env: Vec<String>,
    /// Working directory (absolute); created if missing.
    pub cwd: String,
    /// The guest's hostname.
    pub hostname: String,
    /// `USER[:GROUP]` to run as (names or numeric ids); `None`: root.
    pub user: Option<String>,
    /// Network interfaces to bring up besides `lo`.
    pub net: Vec<String>,
    /// virtio-fs shares to mount before anything runs (`"volumes"`).
    pub volumes: Vec<Volume>,
}

/// A shared host directory (`flint container run -v`): the virtio-fs
/// device tagged `tag`, mounted on `path`, read-only when `read_only`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub tag: String,
    pub path: String,
    pub read_only: bool,
}

/// Parses the settings' `"volumes"`: `[{"tag", "path", "ro"}]`.
fn parse_volumes(value: Option<&Value>) -> Result<Vec<Volume>, String> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let items = value.as_array().ok_or("\"volumes\" is not an array")?;
    items
        .iter()
        .map(|item| {
            let obj = item.as_object().ok_or("a volume is not an object")?;
            let get = |k: &str| obj.iter().find(|(n, _)| n == k).map(|(_, v)| v);
            let text = |k: &str| {
                get(k)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or(format!("a volume has no string \"{k}\""))
            };
            let volume = Volume {
                tag: text("tag")?,
                path: text("path")?,
                read_only: matches!(get("ro"), Some(Value::Bool(true))),
            };
            if !volume.path.starts_with('/') {
                return Err(format!("volume path {:?} is not absolute", volume.path));
            }
            Ok(volume)
        })
        .collect()
}

/// Who the command runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// The user's home directory (for `HOME` when the environment has none).
    pub home: String,
}

/// Resolves `USER[:GROUP]` like runc does: a name must exist in `passwd`;
/// a numeric uid need not (then its group is 0 and its home `/`); the
/// primary group comes from the passwd entry unless GROUP is given; the
/// supplementary groups are those in `group` that list the user by name.
pub fn resolve_user(spec: Option<&str>, passwd: &str, group: &str) -> Result<Credentials, String> {
    let spec = spec.unwrap_or("0");
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entries = |text: &'_ str| -> Vec<Vec<String>> {
        text.lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|l| l.split(':').map(str::to_owned).collect())
            .collect()
    };
    let passwd = entries(passwd);
    let groups = entries(group);
    let numeric = |s: &str| s.parse::<u32>().ok();
    // passwd: name:password:uid:gid:gecos:home:shell
    let by_user = |e: &&Vec<String>| match numeric(user) {
        Some(uid) => e.get(2).and_then(|u| numeric(u)) == Some(uid),
        None => e.first().map(String::as_str) == Some(user),
    };
    let entry = passwd.iter().find(by_user).filter(|e| e.len() >= 4);
    let (uid, mut gid, name, home) = match (entry, numeric(user)) {
        (Some(e), _) => (
            numeric(&e[2]).ok_or(format!("bad uid in /etc/passwd for {user}"))?,
            numeric(&e[3]).ok_or(format!("bad gid in /etc/passwd for {user}"))?,
            Some(e[0].clone()),
            e.get(5).filter(|h| !h.is_empty()).cloned(),
        ),
        (None, Some(uid)) => (uid, 0, None, None),
        (None, None) => return Err(format!("no user {user:?} in /etc/passwd")),
    };
    if let Some(g) = grp {
        gid = match numeric(g) {
            Some(gid) => gid,
            None => groups
                .iter()
                .find(|e| e.first().map(String::as_str) == Some(g))
                .and_then(|e| e.get(2).and_then(|id| numeric(id)))
                .ok_or(format!("no group {g:?} in /etc/group"))?,
        };
    }
    let mut supplementary: Vec<u32> = match &name {
        Some(name) => groups
            .iter()
            .filter(|e| e.get(3).is_some_and(|m| m.split(',').any(|m| m == name)))
            .filter_map(|e| e.get(2).and_then(|id| numeric(id)))
            .collect(),
        None => Vec::new(),
    };
    supplementary.retain(|&g| g != gid);
    supplementary.insert(0, gid);
    supplementary.dedup();
    let home = home.unwrap_or_else(|| if uid == 0 { "/root".into() } else { "/".into() });
    Ok(Credentials {
        uid,
        gid,
        groups: supplementary,
        home,
    })
}

/// Parses the settings drive's contents (trailing NUL padding allowed).
pub fn parse_settings(raw: &[u8]) -> Result<Settings, String> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let text = std::str::from_utf8(&raw[..end]).map_err(|e| format!("not UTF-8: {e}"))?;
    let value = json::parse(text)?;
    let obj = value.as_object().ok_or("not a JSON object")?;
    let field = |name: &str| obj.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    match field("version").and_then(Value::as_u64) {
        Some(SETTINGS_VERSION) => {}
        Some(v) => {
            return Err(format!(
                "settings version {v}, this init reads {SETTINGS_VERSION}"
            ))
        }
        None => return Err("no \"version\"".into()),
    }
    let strings = |name: &str, required: bool| -> Result<Vec<String>, String> {
        match field(name) {
            None if !required => Ok(Vec::new()),
            None => Err(format!("no \"{name}\"")),
            Some(v) => v
                .as_array()
                .ok_or(format!("\"{name}\" is not an array"))?
                .iter()
                .map(|s| {
                    s.as_str()
                        .map(str::to_owned)
                        .ok_or(format!("\"{name}\" has a non-string item"))
                })
                .collect(),
        }
    };
    let string = |name: &str, default: &str| -> Result<String, String> {
        match field(name) {
            None => Ok(default.to_owned()),
            Some(v) => v
                .as_str()
                .map(str::to_owned)
                .ok_or(format!("\"{name}\" is not a string")),
        }
    };
    let user = match field("user") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_str().ok_or("\"user\" is not a string")?.to_owned()),
    };
    let mode = match field("mode") {
        None => Mode::Run,
        Some(v) => match v.as_str() {
            Some("run") => Mode::Run,
            Some("agent") => Mode::Agent,
            _ => return Err("\"mode\" is not \"run\" or \"agent\"".into()),
        },
    };
    let agent_port = match field("agent_port") {
        None => agent_protocol::DEFAULT_PORT,
        Some(v) => v
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .ok_or("\"agent_port\" is not a port number")?,
    };
    let settings = Settings {
        mode,
        agent_port,
        user,
        args: strings("args", mode == Mode::Run)?,
        env: strings("env", false)?,
        cwd: string("cwd", "/")?,
        hostname: string("hostname", "flint")?,
        net: strings("net", false)?,
        volumes: parse_volumes(field("volumes"))?,
    };
    if mode == Mode::Run && settings.args.is_empty() {
        return Err("\"args\" is empty: nothing to run".into());
    }
    if !settings.cwd.starts_with('/') {
        return Err(format!("\"cwd\" {:?} is not absolute", settings.cwd));
    }
    Ok(settings)
}

/// A wait status as a shell reports it: the exit code, or 128 + the signal.
pub fn exit_code(wait_status: i32) -> u8 {
    if libc::WIFEXITED(wait_status) {
        libc::WEXITSTATUS(wait_status) as u8
    } else if libc::WIFSIGNALED(wait_status) {
        (128 + libc::WTERMSIG(wait_status)).min(255) as u8
    } else {
        255
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_padded_settings() {
        let mut raw = br#"{"version":1,"args":["/bin/sh","-c","echo \"hi\"\n"],"env":["A=1"],"cwd":"/w","hostname":"h"}"#.to_vec();
        raw.resize(4096, 0);
        let s = parse_settings(&raw).unwrap();
        assert_eq!(s.args, ["/bin/sh", "-c", "echo \"hi\"\n"]);
        assert_eq!(s.env, ["A=1"]);
        assert_eq!(s.cwd, "/w");
        assert_eq!(s.hostname, "h");
        assert!(s.net.is_empty());
        assert_eq!(s.user, None);
        assert_eq!((s.mode, s.agent_port), (Mode::Run, 1024));
        let s = parse_settings(br#"{"version":1,"mode":"agent","agent_port":5000}"#).unwrap();
        assert_eq!((s.mode, s.agent_port, s.args.len()), (Mode::Agent, 5000, 0));
        let s = parse_settings(br#"{"version":1,"args":["x"],"user":"nobody:5","net":["eth0"]}"#)
            .unwrap();
        assert_eq!(s.user.as_deref(), Some("nobody:5"));
        assert_eq!(s.net, ["eth0"]);
        assert!(s.volumes.is_empty());
        let s = parse_settings(
            br#"{"version":1,"mode":"agent","volumes":[{"tag":"vol0","path":"/www","ro":true},{"tag":"vol1","path":"/d"}]}"#,
        )
        .unwrap();
        assert_eq!(
            s.volumes,
            [
                Volume {
                    tag: "vol0".into(),
                    path: "/www".into(),
                    read_only: true
                },
                Volume {
                    tag: "vol1".into(),
                    path: "/d".into(),
                    read_only: false
                },
            ]
        );
        for bad in [
            &br#"{"version":1,"mode":"agent","volumes":{}}"#[..],
            br#"{"version":1,"mode":"agent","volumes":[{"tag":"v"}]}"#,
            br#"{"version":1,"mode":"agent","volumes":[{"tag":"v","path":"rel"}]}"#,
        ] {
            assert!(parse_settings(bad).is_err());
        }
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n# comment\napp:x:1000:1000::/home/app:/bin/sh\nnohome:x:7:8::::\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:app,other\napp:x:1000:\nwheel:x:10:app\n";

    #[test]
    fn users_resolve_like_runc() {
        let r = |u: Option<&str>| resolve_user(u, PASSWD, GROUP);
        let root = r(None).unwrap();
        assert_eq!((root.uid, root.gid, root.home.as_str()), (0, 0, "/root"));
        assert_eq!(root.groups, [0]);
        let app = r(Some("app")).unwrap();
        assert_eq!(
            (app.uid, app.gid, app.home.as_str()),
            (1000, 1000, "/home/app")
        );
        assert_eq!(app.groups, [1000, 50, 10]);
        assert_eq!(
            r(Some("1000")).unwrap(),
            app,
            "a uid finds its passwd entry"
        );
        let custom = r(Some("app:staff")).unwrap();
        assert_eq!((custom.gid, custom.groups.clone()), (50, vec![50, 10]));
        assert_eq!(r(Some("app:77")).unwrap().gid, 77);
        let anon = r(Some("4242")).unwrap();
        assert_eq!(
            (anon.uid, anon.gid, anon.home.as_str(), anon.groups.clone()),
            (4242, 0, "/", vec![0])
        );
        assert_eq!(r(Some("nohome")).unwrap().home, "/");
        assert!(r(Some("ghost")).unwrap_err().contains("no user"));
        assert!(r(Some("app:ghosts")).unwrap_err().contains("no group"));
        assert_eq!(resolve_user(Some("0"), "", "").unwrap().home, "/root");
    }

    #[test]
    fn rejects_bad_settings() {
        for (raw, want) in [
            (&br#"{"args":["x"]}"#[..], "version"),
            (br#"{"version":2,"args":["x"]}"#, "version 2"),
            (br#"{"version":1}"#, "args"),
            (br#"{"version":1,"args":[]}"#, "empty"),
            (br#"{"version":1,"mode":"daemon"}"#, "mode"),
            (br#"{"version":1,"mode":"agent","agent_port":-1}"#, "port"),
            (br#"{"version":1,"args":[1]}"#, "non-string"),
            (br#"{"version":1,"args":["x"],"cwd":"rel"}"#, "absolute"),
            (br#"[1]"#, "object"),
            (b"{\"version\":1,", "end"),
        ] {
            let err = parse_settings(raw).unwrap_err();
            assert!(err.contains(want), "{err:?} lacks {want:?}");
        }
    }

    #[test]
    fn agent_mode_from_the_kernel_command_line() {
        assert_eq!(
            agent_from_cmdline("console=ttyS0 flint.agent=1\n"),
            Some(1024)
        );
        assert_eq!(
            agent_from_cmdline("flint.agent_port=99 flint.agent=1"),
            Some(99)
        );
        assert_eq!(agent_from_cmdline("flint.agent=0 flint.agent=10"), None);
        assert_eq!(agent_from_cmdline(""), None);
    }

    #[test]
    fn status_records_round_trip() {
        for code in [0, 3, 127, 255] {
            let block = status_record(code);
            assert_eq!(block.len(), BLOCK_SIZE);
            assert_eq!(parse_status_record(&block), Some(code));
        }
        assert_eq!(parse_status_record(&[0; BLOCK_SIZE]), None);
        assert_eq!(parse_status_record(b"flint-exit-status 256\n"), None);
        assert_eq!(parse_status_record(b"flint-exit-status 1"), None);
    }

    #[test]
    fn exit_codes_like_a_shell() {
        assert_eq!(exit_code(3 << 8), 3);
        assert_eq!(exit_code(0), 0);
        assert_eq!(exit_code(9), 137); // SIGKILL
        assert_eq!(exit_code(15), 143); // SIGTERM
    }
}

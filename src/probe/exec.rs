//! Exec probes and exec round trips: a command that receives the value in an environment
//! variable or on stdin.
//!
//! A probe's command gets `ROTOR_INSTANCE_ADDR` and the value (never in argv); a round trip's
//! gets the instance, its URL and the expected fingerprint too. Its output is discarded. Exit 0 means accepted, exit 1 rejected; any other exit, a signal, a spawn failure
//! or the deadline (the command's process group is killed) is an error.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::{ProbeError, Target, Verdict};
use crate::playbook::ExecVia;
use crate::secret::SecretValue;

pub(super) async fn present(
    command: &[String],
    via: &ExecVia,
    at: impl Into<Target<'_>>,
    value: &SecretValue,
    timeout: Duration,
) -> Result<Verdict, ProbeError> {
    let at = at.into();
    let env = [
        ("ROTOR_INSTANCE_ADDR", at.addr.to_string()),
        ("ROTOR_INSTANCE_URL", at.url("")),
    ];
    run(command, via, &env, value, timeout, &at.name()).await
}

/// Runs `command` with `env` and `value` (in `via`) under `timeout`: exit 0 is
/// [`Verdict::Accepted`], 1 [`Verdict::Rejected`], anything else an error about `target`.
pub(super) async fn run(
    command: &[String],
    via: &ExecVia,
    env: &[(&str, String)],
    value: &SecretValue,
    timeout: Duration,
    target: &str,
) -> Result<Verdict, ProbeError> {
    let program = command.first().map(String::as_str).unwrap_or("");
    let failed = |detail: String| ProbeError::Failed {
        probe: format!("exec {program}"),
        target: target.to_string(),
        detail,
    };
    let Some((program, args)) = command.split_first() else {
        return Err(failed("the probe command is empty".into()));
    };

    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group, so a timeout kills whatever it started too.
        .process_group(0)
        .kill_on_drop(true);
    match via {
        ExecVia::Env(name) => {
            cmd.env(name, value.expose()).stdin(Stdio::null());
        }
        ExecVia::Stdin => {
            cmd.stdin(Stdio::piped());
        }
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| failed(format!("cannot start `{program}`: {e}")))?;
    let pid = child.id();

    let run = async {
        if let Some(mut stdin) = child.stdin.take() {
            let mut line = zeroize::Zeroizing::new(String::with_capacity(value.expose().len() + 1));
            line.push_str(value.expose());
            line.push('\n');
            match stdin.write_all(line.as_bytes()).await {
                // A command may decide without reading its input.
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                Err(e) => return Err(format!("cannot write to its standard input: {e}")),
            }
            drop(stdin);
        }
        child
            .wait()
            .await
            .map_err(|e| format!("cannot wait for it: {e}"))
    };
    let outcome = tokio::time::timeout(timeout, run).await;

    let status = match outcome {
        Ok(Ok(status)) => status,
        Ok(Err(detail)) => {
            kill(pid, &mut child).await;
            return Err(failed(detail));
        }
        Err(_) => {
            kill(pid, &mut child).await;
            return Err(failed(format!("no verdict within {timeout:?}; killed")));
        }
    };
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(Verdict::Accepted),
        (Some(1), _) => Ok(Verdict::Rejected),
        (Some(code), _) => Err(failed(format!(
            "exited with status {code} (0 means accepted, 1 rejected)"
        ))),
        (None, Some(sig)) => Err(failed(format!("killed by signal {sig}"))),
        (None, None) => Err(failed(format!("ended with {status}"))),
    }
}

/// Kills the probe's process group (it is its leader, not yet reaped) and reaps the leader.
async fn kill(pid: Option<u32>, child: &mut tokio::process::Child) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.kill().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::SocketAddr;

    const VALUE: &str = "exec-probe-value-0123456789-abcdefghij";
    const T: Duration = Duration::from_secs(10);

    fn addr() -> SocketAddr {
        "127.0.0.1:4242".parse().unwrap()
    }

    /// A file holding the expected value, so it is not in the script's argv either.
    fn expected_file() -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(VALUE.as_bytes()).unwrap();
        f
    }

    fn sh(script: &str, arg: &str) -> Vec<String> {
        vec![
            "sh".into(),
            "-c".into(),
            script.into(),
            "sh".into(),
            arg.into(),
        ]
    }

    const CHECK_ENV: &str = r#"[ "$ROTOR_INSTANCE_ADDR" = "127.0.0.1:4242" ] || exit 3
[ "$ROTOR_INSTANCE_URL" = "http://127.0.0.1:4242" ] || exit 3
[ "$PROBE_SECRET" = "$(cat "$1")" ]"#;
    const CHECK_STDIN: &str = r#"[ "$ROTOR_INSTANCE_ADDR" = "127.0.0.1:4242" ] || exit 3
IFS= read -r line || exit 4
[ "$line" = "$(cat "$1")" ]"#;

    fn value(v: &str) -> SecretValue {
        SecretValue::new(v.into())
    }

    #[tokio::test]
    async fn env_probe_accepts_and_rejects() {
        let f = expected_file();
        let cmd = sh(CHECK_ENV, f.path().to_str().unwrap());
        let via = ExecVia::Env("PROBE_SECRET".into());
        assert_eq!(
            present(&cmd, &via, addr(), &value(VALUE), T).await.unwrap(),
            Verdict::Accepted
        );
        assert_eq!(
            present(&cmd, &via, addr(), &value("another-value"), T)
                .await
                .unwrap(),
            Verdict::Rejected
        );
    }

    #[tokio::test]
    async fn stdin_probe_accepts_and_rejects() {
        let f = expected_file();
        let cmd = sh(CHECK_STDIN, f.path().to_str().unwrap());
        assert_eq!(
            present(&cmd, &ExecVia::Stdin, addr(), &value(VALUE), T)
                .await
                .unwrap(),
            Verdict::Accepted
        );
        assert_eq!(
            present(&cmd, &ExecVia::Stdin, addr(), &value("another-value"), T)
                .await
                .unwrap(),
            Verdict::Rejected
        );
        // A command that decides without reading stdin is fine.
        assert_eq!(
            present(&sh("exit 0", ""), &ExecVia::Stdin, addr(), &value(VALUE), T)
                .await
                .unwrap(),
            Verdict::Accepted
        );
    }

    #[tokio::test]
    async fn value_is_not_in_argv_and_not_in_env_when_sent_on_stdin() {
        // The script fails (exit 2) if the value appears in its argv or environment.
        let f = expected_file();
        let script = r#"v="$(cat "$1")"
case "$0 $*" in *"$v"*) exit 2;; esac
env | grep -qF -- "$v" && exit 2
IFS= read -r line; [ "$line" = "$v" ]"#;
        assert_eq!(
            present(
                &sh(script, f.path().to_str().unwrap()),
                &ExecVia::Stdin,
                addr(),
                &value(VALUE),
                T
            )
            .await
            .unwrap(),
            Verdict::Accepted
        );
    }

    #[tokio::test]
    async fn other_exits_signals_and_spawn_failures_are_errors() {
        let v = value(VALUE);
        let via = ExecVia::Env("PROBE_SECRET".into());
        let e = present(&sh("exit 2", ""), &via, addr(), &v, T)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("exited with status 2"), "{e}");
        assert!(
            e.to_string().contains("exec sh against 127.0.0.1:4242"),
            "{e}"
        );

        let e = present(&sh("kill -9 $$", ""), &via, addr(), &v, T)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("killed by signal 9"), "{e}");

        let e = present(&[], &via, addr(), &v, T).await.unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");

        let e = present(
            &["/nonexistent/rotor-probe-command".to_string()],
            &via,
            addr(),
            &v,
            T,
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("cannot start"), "{e}");
        assert!(!e.to_string().contains(VALUE));
    }

    #[tokio::test]
    async fn timeout_kills_the_command_and_what_it_started() {
        let pidfile = tempfile::NamedTempFile::new().unwrap();
        let script = r#"sleep 30 & echo $! > "$1"; wait"#;
        let started = std::time::Instant::now();
        let e = present(
            &sh(script, pidfile.path().to_str().unwrap()),
            &ExecVia::Stdin,
            addr(),
            &value(VALUE),
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("no verdict within"), "{e}");
        assert!(!e.to_string().contains(VALUE));
        assert!(started.elapsed() < Duration::from_secs(10));

        // The backgrounded sleep died with its group (gone, or a zombie awaiting its reaper).
        let pid: i32 = std::fs::read_to_string(pidfile.path())
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_owned))
                });
            match state.as_deref() {
                None | Some("Z") | Some("X") => break,
                Some(_) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Some(s) => panic!("sleep {pid} still running (state {s})"),
            }
        }
    }

    #[tokio::test]
    async fn exec_round_trip_gets_the_signer_and_the_expected_value_never_in_argv() {
        use crate::playbook::ExecRoundtrip;
        let f = expected_file();
        let v = value(VALUE);
        let fp = v.fingerprint("service-secret");
        let transport = crate::transport::Transport::plain();
        let signer = crate::probe::Signer {
            consumer: "auth",
            instance: "https://auth.example:8443",
            at: transport.reach(addr(), Some("auth.example:8443")),
        };
        // Exit 3 unless every variable is what rotor promises; the value is on stdin only.
        let script = format!(
            r#"[ "$ROTOR_EXPECTED_FINGERPRINT" = "{fp}" ] || exit 3
[ "$ROTOR_CONSUMER" = auth ] || exit 3
[ "$ROTOR_INSTANCE" = https://auth.example:8443 ] || exit 3
[ "$ROTOR_INSTANCE_ADDR" = 127.0.0.1:4242 ] || exit 3
[ "$ROTOR_INSTANCE_URL" = http://auth.example:8443 ] || exit 3
v="$(cat "$1")"
case "$0 $*" in *"$v"*) exit 3;; esac
env | grep -qF -- "$v" && exit 3
IFS= read -r line; [ "$line" = "$v" ]"#
        );
        let spec = ExecRoundtrip {
            command: sh(&script, f.path().to_str().unwrap()),
            via: ExecVia::Stdin,
        };
        let run = |value: SecretValue| {
            let spec = spec.clone();
            let fp = fp.clone();
            async move { crate::probe::exec_roundtrip(&spec, signer, &value, &fp, T).await }
        };
        assert_eq!(run(value(VALUE)).await.unwrap(), Verdict::Accepted);
        assert_eq!(
            run(value("it-sends-another-value")).await.unwrap(),
            Verdict::Rejected
        );
        let broken = ExecRoundtrip {
            command: sh("exit 7", ""),
            via: ExecVia::Env("SIGNER_SECRET".into()),
        };
        let e = crate::probe::exec_roundtrip(&broken, signer, &v, &fp, T)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("exited with status 7"), "{e}");
        assert!(e.contains("https://auth.example:8443"), "{e}");
        assert!(!e.contains(VALUE), "{e}");
    }
}

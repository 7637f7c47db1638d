//! The deployment files in `deploy/`: the systemd unit is checked by
//! `systemd-analyze verify` (where systemd's tools are installed), the
//! Dockerfile for what it must do, and built where a Docker daemon answers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

fn deploy(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy")
            .join(name),
    )
    .unwrap()
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let unit = deploy("pm-events.service");
    for line in [
        "User=pm-events",
        "StateDirectory=pm-events",
        "Environment=PM_LOG_DIR=/var/lib/pm-events",
        "ExecStart=/usr/local/bin/pm-events serve",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
        "SystemCallFilter=@system-service",
    ] {
        assert!(unit.lines().any(|l| l == line), "missing {line}");
    }
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze not installed: the unit's syntax is not verified here");
        return;
    }
    // Verify the unit as installed, with the binary at the path it names.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pm-events.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/pm-events", env!("CARGO_BIN_EXE_pm-events")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let msgs = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{msgs}");
    let ours: Vec<&str> = msgs
        .lines()
        .filter(|l| l.contains("pm-events.service"))
        .collect();
    assert!(ours.is_empty(), "{ours:?}");
}

#[test]
fn the_dockerfile_is_multi_stage_non_root_with_a_data_volume() {
    let file = deploy("Dockerfile");
    let froms = file.lines().filter(|l| l.starts_with("FROM ")).count();
    assert_eq!(froms, 2, "a build stage and a runtime stage");
    let user = file
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .unwrap();
    assert!(
        !user.starts_with("root") && !user.starts_with("0"),
        "{user}"
    );
    assert!(file.contains("VOLUME [\"/data\"]") && file.contains("PM_LOG_DIR=/data"));
    assert!(file.contains("--locked"), "the build uses Cargo.lock");
    let daemon = Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success());
    if !daemon {
        eprintln!("no Docker daemon here: the Dockerfile is not built");
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("docker")
        .args([
            "build",
            "-q",
            "-f",
            "deploy/Dockerfile",
            "-t",
            "pm-events-test",
            ".",
        ])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The install steps in the unit's header, run as written against an empty
/// root directory (as a fresh machine with systemd has it: `/usr/local/bin` and
/// `/etc/systemd/system` exist, `/etc/pm-events` does not). Every absolute path
/// is taken under that root; `useradd` and `systemctl` need the real system and
/// are only checked to be there.
#[test]
fn the_units_install_steps_work_on_a_fresh_machine() {
    let unit = deploy("pm-events.service");
    let steps: Vec<String> = unit
        .lines()
        .take_while(|l| l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("#   "))
        .map(|l| l.split("   #").next().unwrap_or(l).trim().to_string())
        .collect();
    assert!(steps.iter().any(|s| s.starts_with("useradd ")), "{steps:?}");
    assert!(
        steps.iter().any(|s| s.starts_with("systemctl ")),
        "{steps:?}"
    );
    let root = tempfile::tempdir().unwrap();
    let r = root.path().display().to_string();
    for d in ["usr/local/bin", "etc/systemd/system"] {
        std::fs::create_dir_all(root.path().join(d)).unwrap();
    }
    let mut ran = 0;
    for step in steps.iter().filter(|s| s.starts_with("install ")) {
        let cmd = step
            .replace("target/release/pm-events", env!("CARGO_BIN_EXE_pm-events"))
            .replace(" /usr/", &format!(" {r}/usr/"))
            .replace(" /etc/", &format!(" {r}/etc/"))
            .replace(" /var/", &format!(" {r}/var/"));
        let out = Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{step}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ran += 1;
    }
    assert!(ran >= 3, "{steps:?}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &str| {
        std::fs::metadata(root.path().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("etc/pm-events/env"), 0o600);
    assert_eq!(mode("etc/pm-events"), 0o700);
    assert_eq!(mode("usr/local/bin/pm-events"), 0o755);
    assert!(
        root.path()
            .join("etc/systemd/system/pm-events.service")
            .is_file()
    );
}

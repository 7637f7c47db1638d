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

//! End to end: MMDS configured through the API before boot, read by the
//! guest over its virtio-net interface with busybox (one boot, MMDS V2).
//!
//! Run under the shared lock, one guest at a time:
//! `FLINT_GUEST_DIR=/work/shared/guest flock /tmp/flint-e2e.lock cargo test --test mmds`

mod common;

use std::path::Path;
use std::process::Command;

use common::{
    cannot_run, guest_file, is_root, wait_for_socket, Flint, NetNs, BOOT_LOCK, BOOT_TIMEOUT,
};

fn call(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    api_server::client::request(sock, method, path, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn ok(sock: &Path, method: &str, path: &str, body: &serde_json::Value) {
    let (status, answer) = call(sock, method, path, Some(&body.to_string()));
    assert_eq!(status, 204, "{method} {path}: {answer}");
}

/// What the guest runs: a GET without a token (V2: 401), a token by `PUT`
/// (busybox wget cannot PUT, so a raw HTTP/1.0 request from a file through
/// busybox nc, which reads the answer until MMDS closes; files rather than a
/// pipeline of subshells, which crashed under this host's emulation),
/// then the IMDS listing and a leaf with the token. One marker line each.
const SCRIPT: &str = "busybox ip route add 169.254.169.254 dev eth0; \
echo NOTOKEN=$(busybox wget -q -O - http://169.254.169.254/latest/meta-data/ 2>&1); \
printf 'PUT /latest/api/token HTTP/1.0\\r\\nX-metadata-token-ttl-seconds: 300\\r\\n\\r\\n' > /mmds-req; \
busybox nc 169.254.169.254 80 < /mmds-req > /mmds-resp; TOKEN=$(busybox tail -n 1 /mmds-resp); \
echo STATUS=$(busybox head -n 1 /mmds-resp); echo TOKENLEN=${#TOKEN}; \
echo LIST=$(busybox wget -q -O - --header X-metadata-token:$TOKEN http://169.254.169.254/latest/meta-data/); \
echo LEAF=$(busybox wget -q -O - --header X-metadata-token:$TOKEN http://169.254.169.254/latest/meta-data/placement/availability-zone); \
echo BADTOKEN=$(busybox wget -q -O - --header X-metadata-token:00$TOKEN http://169.254.169.254/latest/meta-data/ 2>&1)";

#[test]
fn guest_reads_mmds_v2_over_virtio_net() {
    if !is_root() {
        return cannot_run("needs root for network namespaces and taps");
    }
    let _one_vcpu = BOOT_LOCK.read().unwrap_or_else(|p| p.into_inner());
    let tap = "flinttapm0";
    let Some(ns) = NetNs::new(tap, "172.31.0.1") else {
        return cannot_run("cannot create a network namespace here");
    };
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name])
        .arg(env!("CARGO_BIN_EXE_flint"))
        .args(["run", "--id", "mmds", "--api-sock"])
        .arg(&sock);
    let mut vm = Flint::spawn(cmd, tempfile::tempdir().unwrap());
    wait_for_socket(&sock);

    ok(
        &sock,
        "PUT",
        "/boot-source",
        &serde_json::json!({
            "kernel_image_path": guest_file("vmlinux"),
            "initrd_path": guest_file("initramfs.cpio"),
            "boot_args": format!(
                "console=ttyS0 reboot=k panic=-1 quiet ip=172.31.0.2::172.31.0.1:255.255.255.0::eth0:off guest_net=1 guest_cmd=\"{SCRIPT}\" guest_end=halt"
            ),
        }),
    );
    ok(
        &sock,
        "PUT",
        "/machine-config",
        &serde_json::json!({"vcpu_count": 1, "mem_size_mib": 256}),
    );
    // MMDS on an interface that does not exist yet: Firecracker's 400.
    let (status, answer) = call(
        &sock,
        "PUT",
        "/mmds/config",
        Some(r#"{"version": "V2", "network_interfaces": ["eth0"]}"#),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer.contains("does not correspond to any existing network interface"),
        "{answer}"
    );
    ok(
        &sock,
        "PUT",
        "/network-interfaces/eth0",
        &serde_json::json!({"iface_id": "eth0", "host_dev_name": tap, "guest_mac": "06:00:ac:1f:00:02"}),
    );
    let (status, answer) = call(
        &sock,
        "PUT",
        "/mmds/config",
        Some(r#"{"network_interfaces": ["eth0"], "ipv4_address": "10.0.0.1"}"#),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("not link local"), "{answer}");
    ok(
        &sock,
        "PUT",
        "/mmds/config",
        &serde_json::json!({"version": "V2", "network_interfaces": ["eth0"]}),
    );
    ok(
        &sock,
        "PUT",
        "/mmds",
        &serde_json::json!({"latest": {"meta-data": {
            "ami-id": "ami-12345678",
            "hostname": "flint-guest",
            "placement": {"availability-zone": "wrong"},
        }}}),
    );
    ok(
        &sock,
        "PATCH",
        "/mmds",
        &serde_json::json!({"latest": {"meta-data": {"placement": {"availability-zone": "flint-az-1"}}}}),
    );
    let (status, answer) = call(&sock, "GET", "/mmds", None);
    assert_eq!(status, 200, "{answer}");
    let stored: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        stored["latest"]["meta-data"]["placement"]["availability-zone"],
        "flint-az-1"
    );
    let (status, answer) = call(&sock, "GET", "/vm/config", None);
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains(r#""mmds-config""#), "{answer}");
    ok(
        &sock,
        "PUT",
        "/actions",
        &serde_json::json!({"action_type": "InstanceStart"}),
    );
    // Only before boot.
    let (status, _) = call(
        &sock,
        "PUT",
        "/mmds/config",
        Some(r#"{"network_interfaces": ["eth0"]}"#),
    );
    assert_eq!(status, 400);

    vm.wait_for("GUEST-READY", BOOT_TIMEOUT).unwrap();
    let no_token = vm.wait_for("NOTOKEN=", BOOT_TIMEOUT).unwrap();
    assert!(
        no_token.contains("401"),
        "GET without a token under V2: {no_token}"
    );
    let status = vm.wait_for("STATUS=", BOOT_TIMEOUT).unwrap();
    assert!(status.contains("200"), "PUT /latest/api/token: {status}");
    let token_len = vm.wait_for("TOKENLEN=", BOOT_TIMEOUT).unwrap();
    let token_len: usize = token_len
        .trim()
        .trim_start_matches("TOKENLEN=")
        .parse()
        .unwrap_or(0);
    assert!(
        token_len >= 16,
        "no token from PUT /latest/api/token: {}",
        vm.console()
    );
    let list = vm.wait_for("LIST=", BOOT_TIMEOUT).unwrap();
    assert_eq!(
        list.trim(),
        "LIST=ami-id hostname placement/",
        "IMDS listing"
    );
    let leaf = vm.wait_for("LEAF=", BOOT_TIMEOUT).unwrap();
    assert_eq!(leaf.trim(), "LEAF=flint-az-1", "leaf value");
    let bad = vm.wait_for("BADTOKEN=", BOOT_TIMEOUT).unwrap();
    assert!(bad.contains("401"), "a forged token: {bad}");
}

//! `letterlock bench --quick --json` runs end to end and reports every section with positive
//! figures. It asserts nothing about speed: speed goals live in the benchmark's own output.

use std::process::Command;

use serde_json::Value;

fn positive(v: &Value, path: &str) {
    let x = v
        .pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{path} missing or not a number"));
    assert!(x > 0.0 && x.is_finite(), "{path} = {x}, expected > 0");
}

#[test]
#[ignore = "runs the whole benchmark (--quick): over 10 s in a debug build; .ci/run runs it"]
fn quick_json_has_every_section() {
    let out = Command::new(env!("CARGO_BIN_EXE_letterlock"))
        .args(["bench", "--quick", "--json", "--bits", "2048"])
        .output()
        .expect("the letterlock binary runs");
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");

    assert_eq!(v.pointer("/machine/quick"), Some(&Value::Bool(true)));
    for field in [
        "rsa_decrypt_1core",
        "rsa_decrypt_all",
        "rsa_sign_1core",
        "rsa_sign_all",
        "rsa_encrypt_1core",
        "rsa_verify_1core",
        "aes_gcm_mb_s",
        "sha256_mb_s",
        "seal_pass_mb_s",
    ] {
        positive(&v, &format!("/bounds/{field}"));
    }

    let rows = v["envelope"].as_array().expect("envelope rows");
    for mode in ["hybrid", "asymmetric"] {
        for op in ["seal", "open"] {
            let ran: Vec<&Value> = rows
                .iter()
                .filter(|r| r["mode"] == mode && r["op"] == op && r["not_run"].is_null())
                .collect();
            assert!(ran.len() >= 3, "{mode} {op}: {} sizes ran", ran.len());
            for r in ran {
                for f in ["msgs_s", "mb_s", "bound_msgs_s", "bound_mb_s", "of_bound"] {
                    assert!(r[f].as_f64().unwrap() > 0.0, "{mode} {op} {f}: {r}");
                }
            }
        }
    }
    // Past the asymmetric limit nothing is estimated: the row says why it did not run.
    for r in rows.iter().filter(|r| r["mode"] == "asymmetric") {
        if r["size"].as_u64().unwrap() > 64 * 1024 {
            assert!(r["not_run"].is_string(), "{r}");
            assert_eq!(r["msgs_s"].as_f64(), Some(0.0), "{r}");
        }
    }
    let ratios = v["ratios"].as_array().expect("ratios");
    assert!(!ratios.is_empty());
    for r in ratios {
        assert!(r["seal"].as_f64().unwrap() > 0.0 && r["open"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(
        v.pointer("/asymmetric_correct/all_correct"),
        Some(&Value::Bool(true))
    );

    let rates = v
        .pointer("/server/rates")
        .and_then(Value::as_array)
        .unwrap();
    let conns: Vec<u64> = rates
        .iter()
        .map(|r| r["connections"].as_u64().unwrap())
        .collect();
    assert_eq!(conns, [1, 4, 16, 64]);
    for i in 0..rates.len() {
        positive(&v, &format!("/server/rates/{i}/msgs_s"));
        positive(&v, &format!("/server/rates/{i}/bound_msgs_s"));
    }
    positive(&v, "/server/latency/p50_ms");
    positive(&v, "/server/latency/p99_ms");
    positive(&v, "/server/process_peak_rss_kib");
    // Protocol version 2: handshakes per second beside the sign bound, and the 1 KiB message
    // rate over TLS at 16 connections beside the decrypt bound. No resumption: null.
    for field in [
        "/server/tls/handshakes_s",
        "/server/tls/handshakes_s_sequential",
        "/server/tls/sign_bound_s",
        "/server/tls/rate/msgs_s",
        "/server/tls/rate/bound_msgs_s",
        "/server/tls/rate/of_bound",
    ] {
        positive(&v, field);
    }
    assert_eq!(
        v.pointer("/server/tls/rate/connections"),
        Some(&Value::from(16))
    );
    assert!(
        v.pointer("/server/tls/handshakes")
            .unwrap()
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(
        v.pointer("/server/tls/resumed_handshakes_s")
            .unwrap()
            .is_null(),
        "resumption is not built"
    );
    assert!(
        v.pointer("/server/big_send").unwrap().is_null(),
        "no 1 GiB in --quick"
    );

    let goals = v["goals"].as_array().expect("goals");
    assert_eq!(goals.len(), 4);
}

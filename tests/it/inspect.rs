//! `bty inspect` on real images: formats, sizes, partition tables, digests, refusals.

use std::fs;
use std::process::Command;

use crate::util::*;

const MIB: usize = 1 << 20;

fn inspect_json(path: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let o = bty().arg("inspect").arg(path).arg("--json").args(extra).output().unwrap();
    assert!(o.status.success(), "{}: {}", path.display(), stderr(&o));
    serde_json::from_slice(&o.stdout).expect("inspect --json prints JSON")
}

/// A GPT disk image made by sgdisk: an EFI system partition and a Linux root.
fn gpt_image(dir: &TestDir) -> Vec<u8> {
    let p = dir.path("gpt.img");
    let f = fs::File::create(&p).unwrap();
    f.set_len(16 * MIB as u64).unwrap();
    let st = Command::new("sgdisk")
        .args([
            "-o",
            "-n",
            "1:2048:+4M",
            "-t",
            "1:ef00",
            "-c",
            "1:ESP",
            "-n",
            "2:0:0",
            "-t",
            "2:8300",
            "-c",
            "2:root",
        ])
        .arg(&p)
        .output()
        .expect("running sgdisk (install gdisk: make deps)");
    assert!(st.status.success(), "sgdisk: {}", String::from_utf8_lossy(&st.stderr));
    let mut img = fs::read(&p).unwrap();
    // Some data in the partitions so compressors have something to chew.
    let data = prng_bytes(7, MIB);
    img[2 * MIB..3 * MIB].copy_from_slice(&data);
    img
}

#[test]
fn reports_format_sizes_and_gpt_for_every_format() {
    let dir = TestDir::new("inspect");
    let raw = gpt_image(&dir);
    fs::write(dir.path("disk.img"), &raw).unwrap();
    qcow2(&dir.path("disk.img"), &dir.path("disk.qcow2"), &[]);
    let mut cases: Vec<(String, &str, Option<u64>)> = vec![
        ("disk.img".into(), "raw", Some(raw.len() as u64)),
        ("disk.qcow2".into(), "qcow2", Some(raw.len() as u64)),
    ];
    for (suffix, enc) in encoders().into_iter().skip(1) {
        let name = format!("disk.{suffix}");
        fs::write(dir.path(&name), enc(&raw)).unwrap();
        let (fmt, size) = match suffix {
            "img.gz" => ("gzip", None),
            "img.zst" => ("zstd", None), // streamed encoder: no content size in the frame
            "img.xz" => ("xz", Some(raw.len() as u64)),
            _ => ("bzip2", None),
        };
        cases.push((name, fmt, size));
    }
    // zstd with the size in its frame header.
    let zst = zstd::bulk::compress(&raw, 3).unwrap();
    fs::write(dir.path("sized.img.zst"), zst).unwrap();
    cases.push(("sized.img.zst".into(), "zstd", Some(raw.len() as u64)));

    for (name, fmt, size) in cases {
        let v = inspect_json(&dir.path(&name), &[]);
        assert_eq!(v["format"], fmt, "{name}");
        assert_eq!(v["virtual_size"].as_u64(), size, "{name}: {v}");
        assert_eq!(
            v["compressed_size"].as_u64(),
            Some(fs::metadata(dir.path(&name)).unwrap().len())
        );
        let pt = &v["partition_table"];
        assert_eq!(pt["kind"], "gpt", "{name}: {pt}");
        let parts = pt["partitions"].as_array().unwrap();
        assert_eq!(parts.len(), 2, "{name}");
        assert_eq!(parts[0]["type_name"], "EFI System");
        assert_eq!(parts[0]["name"], "ESP");
        assert_eq!(parts[0]["start"].as_u64(), Some(MIB as u64));
        assert_eq!(parts[0]["size"].as_u64(), Some(4 * MIB as u64));
        assert_eq!(parts[1]["name"], "root");
    }
}

#[test]
fn human_output_and_sha256() {
    let dir = TestDir::new("inspect-human");
    let raw = gpt_image(&dir);
    let p = dir.path("disk.img.xz");
    let data = xz(&raw);
    fs::write(&p, &data).unwrap();
    let o = bty().arg("inspect").arg(&p).arg("--sha256").output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("format:          xz"), "{out}");
    assert!(out.contains("16.0 MiB (16777216 bytes)"), "{out}");
    assert!(out.contains("EFI System"), "{out}");
    assert!(out.contains(&format!("sha256:          {}", sha256(&data))), "{out}");
    let v = inspect_json(&p, &["--sha256"]);
    assert_eq!(v["sha256"], sha256(&data));
}

#[test]
fn refusals_name_the_reason() {
    let dir = TestDir::new("inspect-bad");
    let raw = gpt_image(&dir);
    fs::write(dir.path("raw.img"), &raw).unwrap();
    // A qcow2 with a backing file.
    qcow2(&dir.path("raw.img"), &dir.path("base.qcow2"), &[]);
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(dir.path("base.qcow2"))
        .arg(dir.path("top.qcow2"))
        .status()
        .unwrap();
    assert!(st.success());
    let cases = [
        ("top.qcow2", None, "backing file"),
        ("wrong.img.gz", Some(zstd(&raw)), "named like a gzip image but its content is zstd"),
        ("empty.img", Some(Vec::new()), "empty"),
        ("rootfs.tar.gz", Some(gzip(&raw)), "tar archive"),
        (
            "garbage.img.gz",
            Some(b"\x1f\x8bnot really gzip at all".to_vec()),
            "decoding the first MiB",
        ),
    ];
    for (name, data, want) in cases {
        if let Some(d) = data {
            fs::write(dir.path(name), d).unwrap();
        }
        let o = bty().arg("inspect").arg(dir.path(name)).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{name}");
        assert!(stderr(&o).contains(want), "{name}: {}", stderr(&o));
    }
}

//! The operator image (hack/image.sh), built without a Docker daemon or a base
//! image: it runs `/aifactory run` as the nonroot user the chart's securityContext
//! names, the binary inside needs nothing but itself, the same binary gives the same
//! image byte for byte, and it is tagged as the chart deploys it by default.
//!
//! Needs cargo and Go, never the local factory. The first run builds the static
//! binary (minutes on 2 cores; seconds afterwards, in target/image/cargo).
//! `AIFACTORY_IMAGE_TAR=<tarball>` tests a prebuilt image instead.
use aifactory_tests::*;
use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The user the image runs as: what the chart's securityContext asks for.
const NONROOT: u32 = 65532;

/// A `docker save` tarball, opened.
struct Image {
    tarball: PathBuf,
    /// The manifest digest hack/image.sh printed (unknown for a prebuilt tarball).
    digest: Option<String>,
    /// manifest.json's only entry: Config, RepoTags, Layers.
    manifest: Value,
    config: Value,
    /// The layer's entries by path.
    files: BTreeMap<String, File>,
}

struct File {
    mode: u32,
    uid: u64,
    gid: u64,
    dir: bool,
    body: Vec<u8>,
}

/// Runs hack/image.sh with `args` and `env`; returns the digest it printed. Its
/// progress (stderr) goes straight to the terminal: a cold build takes minutes.
fn image_sh(args: &[&str], env: &[(&str, &str)]) -> Result<String> {
    let out = Command::new(repo_root().join("hack/image.sh"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(repo_root())
        .stderr(Stdio::inherit())
        .output()
        .context("running hack/image.sh")?;
    let stdout = String::from_utf8(out.stdout)?;
    ensure!(out.status.success(), "hack/image.sh failed: {stdout}");
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("digest "))
        .map(str::to_string)
        .with_context(|| format!("no digest in hack/image.sh's output: {stdout}"))
}

fn open(tarball: &Path, digest: Option<String>) -> Result<Image> {
    let mut entries = BTreeMap::new();
    let mut archive = tar::Archive::new(std::fs::File::open(tarball)?);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let mut body = vec![];
        entry.read_to_end(&mut body)?;
        entries.insert(path, body);
    }
    let file = |name: &str| {
        entries
            .get(name)
            .with_context(|| format!("{name} is not in {}", tarball.display()))
    };
    let manifests: Value = serde_json::from_slice(file("manifest.json")?)?;
    let [manifest] = manifests.as_array().context("manifest.json")?.as_slice() else {
        bail!("manifest.json should list one image: {manifests}");
    };
    let config = serde_json::from_slice(file(manifest["Config"].as_str().context("Config")?)?)?;
    let [layer] = manifest["Layers"].as_array().context("Layers")?.as_slice() else {
        bail!("one layer expected: {manifest}");
    };
    let mut files = BTreeMap::new();
    let gz = flate2::read::GzDecoder::new(file(layer.as_str().context("layer")?)?.as_slice());
    for entry in tar::Archive::new(gz).entries()? {
        let mut entry = entry?;
        let header = entry.header().clone();
        let path = entry.path()?.to_string_lossy().into_owned();
        let mut body = vec![];
        entry.read_to_end(&mut body)?;
        files.insert(
            path.trim_end_matches('/').to_string(),
            File {
                mode: header.mode()?,
                uid: header.uid()?,
                gid: header.gid()?,
                dir: header.entry_type().is_dir(),
                body,
            },
        );
    }
    Ok(Image {
        tarball: tarball.to_path_buf(),
        digest,
        manifest: manifest.clone(),
        config,
        files,
    })
}

/// The image under test, built once for all tests of this file.
fn image() -> &'static Image {
    static IMAGE: OnceLock<Result<Image, String>> = OnceLock::new();
    let built = IMAGE.get_or_init(|| {
        let built = match std::env::var_os("AIFACTORY_IMAGE_TAR") {
            Some(tarball) => open(Path::new(&tarball), None),
            None => image_sh(&[], &[]).and_then(|digest| {
                let tarball = repo_root().join(format!(
                    "target/image/aifactory-{}.tar",
                    operator_version()?
                ));
                open(&tarball, Some(digest))
            }),
        };
        built.map_err(|e| format!("{e:#}"))
    });
    match built {
        Ok(image) => image,
        Err(e) => panic!("building the image: {e}"),
    }
}

/// The operator crate's version (operator/Cargo.toml), which tags the image.
fn operator_version() -> Result<String> {
    let toml = std::fs::read_to_string(repo_root().join("operator/Cargo.toml"))?;
    toml.lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .map(str::to_string)
        .context("no version in operator/Cargo.toml")
}

fn yaml_file(path: &str) -> Result<Value> {
    Ok(serde_yaml::from_str(&std::fs::read_to_string(
        repo_root().join(path),
    )?)?)
}

/// The program interpreter (PT_INTERP) an ELF64 executable asks the kernel for: the
/// dynamic loader, which an image from scratch does not have. None when static.
fn elf_interpreter(elf: &[u8]) -> Result<Option<String>> {
    ensure!(
        elf.starts_with(b"\x7fELF\x02\x01"),
        "not a little-endian ELF64 file"
    );
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        const PT_INTERP: u32 = 3;
        if u32::from_le_bytes(elf[ph..ph + 4].try_into().unwrap()) == PT_INTERP {
            let (offset, size) = (u64_at(ph + 8), u64_at(ph + 32));
            let path = &elf[offset..offset + size];
            return Ok(Some(
                String::from_utf8_lossy(path.strip_suffix(b"\0").unwrap_or(path)).into_owned(),
            ));
        }
    }
    Ok(None)
}

#[test]
fn the_image_runs_the_operator_as_the_nonroot_user_the_chart_names() -> Result<()> {
    let image = image();
    let config = &image.config["config"];
    assert_eq!(config["Entrypoint"], json!(["/aifactory"]));
    // The chart's args (`run --log-format=json …`) replace this Cmd.
    assert_eq!(config["Cmd"], json!(["run"]));
    assert_eq!(config["User"], format!("{NONROOT}:{NONROOT}"));
    assert_eq!(image.config["os"], "linux");
    assert_eq!(image.config["architecture"], "amd64");
    // What docker load and containerd's import accept.
    assert_eq!(image.config["rootfs"]["type"], "layers");
    assert_eq!(
        image.config["rootfs"]["diff_ids"].as_array().unwrap().len(),
        1
    );

    // The name 65532 goes by, for tools and libc that look it up.
    let text = |path: &str| String::from_utf8_lossy(&image.files[path].body).into_owned();
    assert!(
        text("etc/passwd")
            .lines()
            .any(|l| l.starts_with(&format!("nonroot:x:{NONROOT}:{NONROOT}:"))),
        "{}",
        text("etc/passwd")
    );
    assert!(
        text("etc/group").contains(&format!("nonroot:x:{NONROOT}:")),
        "{}",
        text("etc/group")
    );
    // Pod Security `restricted` and runAsNonRoot hold only if image and chart agree.
    let deployment =
        std::fs::read_to_string(repo_root().join("charts/aifactory/templates/deployment.yaml"))?;
    let run_as: Vec<&str> = deployment
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runAsUser:"))
        .map(str::trim)
        .collect();
    assert!(!run_as.is_empty(), "the chart sets no runAsUser");
    for uid in run_as {
        assert_eq!(uid, NONROOT.to_string(), "the chart runs as {uid}");
    }

    let labels = &config["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.version"],
        operator_version()?
    );
    assert!(
        labels["org.opencontainers.image.revision"]
            .as_str()
            .is_some_and(|r| r.len() >= 40),
        "{labels}"
    );
    assert!(
        labels["org.opencontainers.image.source"]
            .as_str()
            .is_some_and(|s| s.starts_with("https://")),
        "{labels}"
    );
    Ok(())
}

#[test]
fn the_binary_in_the_image_needs_nothing_but_itself() -> Result<()> {
    let image = image();
    let names: Vec<&String> = image.files.keys().collect();
    assert_eq!(names, ["aifactory", "etc", "etc/group", "etc/passwd"]);
    let binary = &image.files["aifactory"];
    assert!(!binary.dir);
    assert_eq!(binary.mode & 0o7777, 0o755);
    // Owned by root: the operator cannot rewrite its own binary.
    assert_eq!((binary.uid, binary.gid), (0, 0));
    assert_eq!(
        elf_interpreter(&binary.body)?,
        None,
        "the binary wants a dynamic loader, which the image lacks: build it with crt-static"
    );

    // Run it with no environment, from a directory holding only itself.
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("aifactory");
    std::fs::write(&path, &binary.body)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    for args in [&["--help"][..], &["run", "--help"]] {
        let out = Command::new(&path)
            .args(args)
            .env_clear()
            .current_dir(dir.path())
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "aifactory {args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("Usage: aifactory"), "{stdout}");
    }
    let help = Command::new(&path).arg("run").arg("--help").output()?;
    assert!(String::from_utf8_lossy(&help.stdout).contains("--lease-namespace"));
    Ok(())
}

#[test]
fn the_same_binary_gives_the_same_image_byte_for_byte() -> Result<()> {
    let image = image();
    let dir = tempfile::tempdir()?;
    let binary = dir.path().join("aifactory");
    std::fs::write(&binary, &image.files["aifactory"].body)?;
    // The other inputs as the first build had them: its time, revision and source.
    let created: jiff::Timestamp = image.config["created"].as_str().unwrap().parse()?;
    let labels = &image.config["config"]["Labels"];
    let label = |name: &str| labels[name].as_str().unwrap().to_string();
    let out = dir.path().join("out");
    let digest = image_sh(
        &[
            "--binary",
            binary.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[
            ("SOURCE_DATE_EPOCH", &created.as_second().to_string()),
            (
                "AIFACTORY_IMAGE_REVISION",
                &label("org.opencontainers.image.revision"),
            ),
            (
                "AIFACTORY_IMAGE_SOURCE",
                &label("org.opencontainers.image.source"),
            ),
        ],
    )?;
    if let Some(first) = &image.digest {
        assert_eq!(&digest, first);
    }
    let again = out.join(image.tarball.file_name().unwrap());
    assert!(
        std::fs::read(&again)? == std::fs::read(&image.tarball)?,
        "{} and {} differ",
        again.display(),
        image.tarball.display()
    );
    Ok(())
}

#[test]
fn the_image_is_tagged_as_the_chart_deploys_it_by_default() -> Result<()> {
    let image = image();
    let chart = yaml_file("charts/aifactory/Chart.yaml")?;
    let values = yaml_file("charts/aifactory/values.yaml")?;
    // The chart's default tag is its appVersion, which must be the operator's.
    assert_eq!(chart["appVersion"], operator_version()?);
    assert_eq!(values["image"]["tag"], "");
    let repository = values["image"]["repository"].as_str().unwrap();
    assert_eq!(
        image.manifest["RepoTags"],
        json!([format!(
            "{repository}:{}",
            chart["appVersion"].as_str().unwrap()
        )])
    );
    Ok(())
}

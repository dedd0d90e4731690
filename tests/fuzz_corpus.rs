//! The fuzz targets (`kite_fuzz_harness`) on stable, as ordinary tests: every file of each target's
//! seed corpus (`fuzz/corpus/<target>/`) and of its crash regressions
//! (`fuzz/regressions/<target>/`) runs through the target, so the targets build and pass where
//! no nightly toolchain is. The seed files are what the targets' own helpers make;
//! `KITE_FUZZ_WRITE_SEEDS=1 cargo test --test fuzz_corpus` writes them anew.

use std::path::{Path, PathBuf};

use kite_fuzz_harness::{TARGETS, Target, target};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files in `dir`, sorted (none if it does not exist).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

fn run_corpus(name: &str) {
    let t: &Target = target(name).unwrap_or_else(|| panic!("no fuzz target {name}"));
    let seeds = files(&fuzz_dir().join("corpus").join(name));
    assert!(!seeds.is_empty(), "{name} has no seed corpus");
    let regressions = files(&fuzz_dir().join("regressions").join(name));
    for file in seeds.iter().chain(&regressions) {
        let data = std::fs::read(file).expect("corpus file");
        eprintln!("{name}: {}", file.display());
        (t.run)(&data);
    }
}

macro_rules! corpus_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_corpus(stringify!($name));
            }
        )*

        #[test]
        fn every_target_has_a_corpus_test() {
            let tested = [$(stringify!($name)),*];
            let all: Vec<_> = TARGETS.iter().map(|t| t.name).collect();
            assert_eq!(tested.to_vec(), all);
        }
    };
}

corpus_tests!(
    virtio_queue,
    virtio_blk,
    virtio_net,
    virtio_vsock,
    virtio_mmio,
    loader,
    config,
    api,
    snapshot,
);

/// Each target has its libFuzzer binary in `fuzz/` (which only builds on nightly), and each
/// binary runs a target that exists.
#[test]
fn every_target_has_a_libfuzzer_binary() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    let wrappers = files(&fuzz_dir().join("fuzz_targets"));
    assert_eq!(wrappers.len(), TARGETS.len(), "{wrappers:?}");
    for t in TARGETS {
        let path = fuzz_dir()
            .join("fuzz_targets")
            .join(format!("{}.rs", t.name));
        let source = std::fs::read_to_string(&path).expect("fuzz target source");
        assert!(
            source.contains(&format!("kite_fuzz_harness::run(\"{}\", data)", t.name)),
            "{} does not run its target",
            path.display()
        );
        assert!(
            manifest.contains(&format!(
                "name = \"{0}\"\npath = \"fuzz_targets/{0}.rs\"",
                t.name
            )),
            "fuzz/Cargo.toml has no [[bin]] for {}",
            t.name
        );
    }
}

/// The committed seeds are the ones the targets' helpers make now.
#[test]
fn seeds_are_current() {
    let write = std::env::var_os("KITE_FUZZ_WRITE_SEEDS").is_some();
    let mut stale = Vec::new();
    for t in TARGETS {
        let dir = fuzz_dir().join("corpus").join(t.name);
        for seed in (t.seeds)() {
            let path = dir.join(seed.name);
            if std::fs::read(&path).ok().as_deref() == Some(seed.data.as_slice()) {
                continue;
            }
            if write {
                std::fs::create_dir_all(&dir).expect("corpus directory");
                std::fs::write(&path, &seed.data).expect("seed file");
            } else {
                stale.push(path.display().to_string());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "seed files missing or out of date (KITE_FUZZ_WRITE_SEEDS=1 cargo test --test \
         fuzz_corpus writes them): {stale:?}"
    );
}

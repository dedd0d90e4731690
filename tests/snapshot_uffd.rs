//! Snapshot loads on the `Uffd` memory backend: the ring-3 test guest, snapshotted in the
//! middle of a scenario, is restored in a new process whose guest RAM is filled by
//! `kite-uffd-handler` (Firecracker's protocol: the region list and the userfaultfd over a Unix
//! socket), and the scenario finishes; the handler says how many faults it served. And the bad
//! input: a handler socket that is missing or refuses (API and `kite restore --uffd`). And,
//! without a guest, the first touch of each page on either backend: the right bytes, and what
//! it costs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::api::*;
use common::snap::*;
use common::*;

const LIMIT: Duration = Duration::from_secs(60);
/// The test guest, if KVM and a userfaultfd that catches KVM's faults are there.
fn uffd_ready(test: &str) -> Option<PathBuf> {
    if let Some(reason) = kvm_unavailable() {
        skip(test, Need::Kvm, &reason);
        return None;
    }
    if let Err(e) = kite_vmm::snapshot::uffd::Uffd::new() {
        skip(test, Need::Userfaultfd, &e);
        return None;
    }
    ready(test)
}

/// Pause `vm` and write a Full snapshot to `dir/{name}.state` and `dir/{name}.mem`.
fn create(vm: &ApiVm, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    vm.ok("PATCH", "/vm", PAUSE);
    create_paused(vm, dir, name)
}

/// [`create`] of a VM paused already.
fn create_paused(vm: &ApiVm, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (state, mem) = (
        dir.join(format!("{name}.state")),
        dir.join(format!("{name}.mem")),
    );
    vm.ok(
        "PUT",
        "/snapshot/create",
        &create_body("Full", &state, &mem),
    );
    (state, mem)
}

/// `kite-uffd-handler SOCKET MEMORY`, its socket ready.
fn handler(socket: &Path, memory: &Path) -> Guest {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kite-uffd-handler"));
    cmd.arg(socket).arg(memory);
    let h = Guest::start(cmd);
    let start = Instant::now();
    while !socket.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the handler does not listen: {}",
            h.err()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    h
}

/// The faults `kite-uffd-handler` says it served, once it has exited 0.
fn faults_served(mut h: Guest) -> u64 {
    assert_eq!(h.wait_exit(LIMIT), Some(0), "{}{}", h.out(), h.err());
    let out = h.out();
    out.lines()
        .find_map(|l| l.strip_prefix("kite-uffd-handler: served "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no count in the handler's output: {out}"))
}

/// Which 4 KiB pages of a memory file hold something other than zeroes.
fn non_zero_pages(mem: &Path) -> Vec<bool> {
    std::fs::read(mem)
        .unwrap()
        .chunks(4096)
        .map(|p| p.iter().any(|&b| b != 0))
        .collect()
}

#[test]
fn a_ticking_guest_goes_on_with_its_memory_served_by_the_handler() {
    let test = "uffd_tick";
    let Some(kernel) = uffd_ready(test) else {
        return;
    };
    let dir = snap_dir(test);
    let vm = start(
        test,
        &kernel,
        "256M",
        &["--cpus", "2"],
        "kite_test=tick kite_tick_ms=5 kite_n=300",
    );
    vm.wait_stdout(LIMIT, |out| last_tick(out) >= 10);
    let (state, mem) = create(&vm, &dir, "first");
    std::thread::sleep(Duration::from_millis(50));
    let before = vm.stdout();
    assert!(last_tick(&before) < 200, "the scenario got too far first");
    drop(vm);

    // Restored on the Uffd backend with dirty-page tracking, it runs on. At one paused moment,
    // a Diff and a Full snapshot: the Full reads every page (the handler serves the ones the
    // guest has not touched) and must hold all the first one held; the Diff merged over the
    // first memory file must be that Full's memory byte for byte.
    let socket = dir.join("handler.sock");
    let h = handler(&socket, &mem);
    let restored = ApiVm::start(&format!("{test}-uffd"), &[]);
    let body = load_body(&state, "Uffd", &socket, true).replace(
        "\"resume_vm\"",
        "\"track_dirty_pages\": true, \"resume_vm\"",
    );
    restored.ok("PUT", "/snapshot/load", &body);
    restored.wait_stdout(LIMIT, |out| last_tick(out) >= last_tick(&before) + 10);
    restored.ok("PATCH", "/vm", PAUSE);
    let (diff_state, diff) = (dir.join("diff.state"), dir.join("diff.mem"));
    restored.ok(
        "PUT",
        "/snapshot/create",
        &create_body("Diff", &diff_state, &diff),
    );
    let (state2, mem2) = create_paused(&restored, &dir, "second");
    std::thread::sleep(Duration::from_millis(50));
    let middle = restored.stdout();
    let (a, b) = (non_zero_pages(&mem), non_zero_pages(&mem2));
    let lost = a.iter().zip(&b).filter(|&(&x, &y)| x && !y).count();
    assert_eq!(
        lost, 0,
        "pages of the first snapshot missing from the second"
    );
    let merged = dir.join("merged.mem");
    std::fs::copy(&mem, &merged).unwrap();
    let mut cmd = kite();
    cmd.args(["rebase-snap", "--base-file", path_str(&merged)])
        .args(["--diff-file", path_str(&diff)]);
    let out = run(cmd, LIMIT);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        std::fs::read(&merged).unwrap() == std::fs::read(&mem2).unwrap(),
        "the Diff merged over the first memory file is not the Full of the same moment"
    );
    restored.ok("PATCH", "/vm", RESUME);
    let mut restored = restored;
    assert_eq!(restored.wait(LIMIT), Some(0), "{}", restored.stderr());
    let out = restored.stdout();
    assert!(out.contains("KITE-TEST tick ok ticks=300"), "{out}");
    let all = ticks(&format!("{before}{out}"));
    assert_eq!(all, (1..=300).collect::<Vec<u64>>(), "{before}\n---\n{out}");
    let served = faults_served(h);
    assert!(served > 0, "the handler served no fault");
    // Every page the guest had touched is there, not more than RAM.
    assert!(served <= (256 << 20) / 4096, "{served} faults");

    // The second snapshot, taken on the Uffd backend, restores from its file.
    let mut again = ApiVm::start(&format!("{test}-file"), &[]);
    again.ok(
        "PUT",
        "/snapshot/load",
        &load_body(&state2, "File", &mem2, true),
    );
    assert_eq!(again.wait(LIMIT), Some(0), "{}", again.stderr());
    let out2 = again.stdout();
    assert!(out2.contains("KITE-TEST tick ok ticks=300"), "{out2}");
    let all = ticks(&format!("{before}{middle}{out2}"));
    assert_eq!(
        all,
        (1..=300).collect::<Vec<u64>>(),
        "{middle}\n---\n{out2}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Disk requests in flight: the device's own reads and writes of guest memory (descriptors,
/// buffers) fault in Kite's event loop, and the handler serves those too.
#[test]
fn disk_writes_go_on_after_a_uffd_restore() {
    let test = "uffd_blk";
    let Some(kernel) = uffd_ready(test) else {
        return;
    };
    let dir = snap_dir(test);
    let disk = dir.join("disk.img");
    let vm = paused_during_disk_io(test, &kernel, &disk, path_str(&disk), 7);
    let (state, mem) = create_paused(&vm, &dir, "blk");
    drop(vm);
    let socket = dir.join("handler.sock");
    let h = handler(&socket, &mem);
    let mut restored = ApiVm::start(&format!("{test}-restored"), &[]);
    restored.ok(
        "PUT",
        "/snapshot/load",
        &load_body(&state, "Uffd", &socket, true),
    );
    disk_check_finishes(&mut restored, &disk, 7);
    assert!(faults_served(h) > 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_handler_socket_that_is_missing_or_refuses_is_400_and_the_load_can_be_retried() {
    let test = "uffd_bad";
    let Some(kernel) = uffd_ready(test) else {
        return;
    };
    let dir = snap_dir(test);
    let vm = start(
        test,
        &kernel,
        "64M",
        &[],
        "kite_test=tick kite_tick_ms=5 kite_n=60",
    );
    vm.wait_stdout(LIMIT, |out| last_tick(out) >= 3);
    let (state, mem) = create(&vm, &dir, "s");
    drop(vm);

    let mut restored = ApiVm::start(&format!("{test}-restored"), &[]);
    let missing = dir.join("nobody-listens.sock");
    restored.bad(
        "PUT",
        "/snapshot/load",
        Some(&load_body(&state, "Uffd", &missing, true)),
        "cannot connect to the page-fault handler's socket",
    );
    // A socket file nobody listens on any more: refused.
    let refused = dir.join("refused.sock");
    drop(std::os::unix::net::UnixListener::bind(&refused).unwrap());
    restored.bad(
        "PUT",
        "/snapshot/load",
        Some(&load_body(&state, "Uffd", &refused, true)),
        "Connection refused",
    );
    restored.bad(
        "PUT",
        "/snapshot/load",
        Some(&load_body(&state, "Floppy", &refused, true)),
        "use File or Uffd",
    );
    // Nothing of the failed loads is left: the same Kite loads from the file and runs.
    restored.ok(
        "PUT",
        "/snapshot/load",
        &load_body(&state, "File", &mem, true),
    );
    assert_eq!(restored.wait(LIMIT), Some(0), "{}", restored.stderr());
    assert!(restored.stdout().contains("KITE-TEST tick ok ticks=60"));

    // `kite restore --uffd` with no handler: exit 2, one line.
    let snap = dir.join("snapdir");
    std::fs::create_dir(&snap).unwrap();
    std::fs::rename(&state, snap.join("vmstate")).unwrap();
    std::fs::rename(&mem, snap.join("memory")).unwrap();
    let mut cmd = kite();
    cmd.arg("restore").arg(&snap).arg("--uffd").arg(&missing);
    let out = run(cmd, LIMIT);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    let errors = out.error_lines();
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    assert!(errors[0].contains("page-fault handler"), "{}", out.stderr);
    // With one listening, the same command runs the snapshot to its end.
    let h = handler(&missing, &snap.join("memory"));
    let mut cmd = kite();
    cmd.arg("restore").arg(&snap).arg("--uffd").arg(&missing);
    let out = run(cmd, LIMIT);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains("KITE-TEST tick ok ticks=60"),
        "{}",
        out.stdout
    );
    assert!(faults_served(h) > 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Guest RAM of 64 MiB on each backend, every page touched once from this process (as KVM or
/// a device would): the bytes are the memory file's (page `i` starts with `i`; every fourth page
/// is a hole, served as the zero page), the handler served each page once, and the time per
/// page is printed (`--nocapture`), with the time each backend takes to set guest RAM up: File read (the page cache's page mapped), File write (a
/// copy on write), Uffd (a round trip to the handler and UFFDIO_COPY).
#[test]
fn first_touch_gives_the_files_bytes_and_costs_one_fault_per_page() {
    use std::os::unix::fs::FileExt;
    use vm_memory::{Bytes, GuestAddress};
    let test = "uffd_first_touch";
    if let Err(e) = kite_vmm::snapshot::uffd::Uffd::new() {
        return skip(test, Need::Userfaultfd, &e);
    }
    let dir = snap_dir(test);
    const SIZE: u64 = 64 << 20;
    const PAGES: u64 = SIZE / 4096;
    let path = dir.join("memory");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(SIZE).unwrap();
    let expect = |page: u64| if page % 4 == 3 { 0 } else { page + 1 };
    for page in 0..PAGES {
        if expect(page) != 0 {
            file.write_all_at(&vec![(page + 1) as u8; 4096], page * 4096)
                .unwrap();
            file.write_all_at(&expect(page).to_ne_bytes(), page * 4096)
                .unwrap();
        }
    }
    file.sync_all().unwrap();
    // In the page cache, as a snapshot loaded before would have it.
    std::fs::read(&path).unwrap();
    let touch = |mem: &kite_vmm::memory::GuestMem, write: bool| {
        let start = Instant::now();
        for page in 0..PAGES {
            let at = GuestAddress(page * 4096);
            let got: u64 = mem.read_obj(at).unwrap();
            assert_eq!(got, expect(page), "page {page}");
            if write {
                mem.write_obj(got, at).unwrap();
            }
        }
        start.elapsed().as_nanos() as f64 / PAGES as f64
    };
    let mapped = Instant::now();
    let file_mem = kite_vmm::snapshot::memfile::map_private(&path, SIZE).unwrap();
    let map_time = mapped.elapsed();
    let file_read = touch(&file_mem, false);
    let file_mem = kite_vmm::snapshot::memfile::map_private(&path, SIZE).unwrap();
    let file_write = touch(&file_mem, true);

    let socket = dir.join("handler.sock");
    let h = handler(&socket, &path);
    let handed = Instant::now();
    let uffd_mem = kite_vmm::memory::create(SIZE).unwrap();
    let backend = kite_vmm::snapshot::uffd::hand_over(&uffd_mem, &socket).unwrap();
    let hand_time = handed.elapsed();
    let uffd = touch(&uffd_mem, true);
    drop(backend);
    assert_eq!(faults_served(h), PAGES);
    eprintln!(
        "guest RAM set up: File (map the memory file) {map_time:?}, Uffd (map, userfaultfd, register, connect, send) {hand_time:?}; first touch per 4 KiB page, {PAGES} pages: File read {file_read:.0} ns, File write (copy on write) {file_write:.0} ns, Uffd (kite-uffd-handler) {uffd:.0} ns"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

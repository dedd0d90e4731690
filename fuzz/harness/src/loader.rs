//! Fuzz target `loader`: the kernel loader on an image from the input (ELF `vmlinux` or bzImage,
//! told apart as for a file), then what the VMM does with what it loaded: the initrd's place,
//! the zero page and the command line written into guest RAM.
//!
//! Input: the command line's length (u16), the initrd's size (u32), then the kernel image.

use std::io::Cursor;
use std::path::Path;

use vm_memory::{Bytes, GuestAddress};

use super::Seed;
use super::input::{Input, Writer};
use kite_vmm::arch::x86_64::boot::{
    self, KERNEL_HEADROOM, LoadedKernel, initrd_address, load_kernel_image, low_ram_end,
};
use kite_vmm::arch::x86_64::layout::{CMDLINE_MAX_SIZE, HIMEM_START};
use kite_vmm::memory::GuestMem;

/// Guest RAM for the loader: enough for a small kernel and its headroom. The loader only writes
/// into it, so one mapping serves every run.
const MEM_SIZE: u64 = 32 << 20;

fn memory() -> GuestMem {
    thread_local! {
        static MEM: GuestMem =
            kite_vmm::memory::create(MEM_SIZE).expect("guest memory for the loader");
    }
    MEM.with(|m| m.clone())
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let cmdline_len = usize::from(input.u16());
    let initrd_size = u64::from(input.u32());
    let image = input.rest();
    let mem = &memory();
    let Ok(kernel) = load_kernel_image(mem, &mut Cursor::new(image), Path::new("fuzz-kernel"))
    else {
        return;
    };
    check_loaded(mem, &kernel);

    let initrd = initrd_address(
        low_ram_end(mem),
        kernel.initrd_addr_max(),
        kernel.end,
        initrd_size,
    )
    .map(|addr| {
        let end = addr.0 + initrd_size;
        assert!(
            addr.0 >= kernel.end && end <= low_ram_end(mem),
            "initrd at {addr:?}"
        );
        assert!(
            end - 1 <= kernel.initrd_addr_max(),
            "initrd above its limit"
        );
        (addr, initrd_size)
    });

    let max = kernel.cmdline_max();
    assert!(max < CMDLINE_MAX_SIZE, "command line limit {max}");
    let cmdline_len = cmdline_len % (CMDLINE_MAX_SIZE + 1);
    match boot::zero_page(&kernel, cmdline_len, initrd, MEM_SIZE) {
        Ok(params) => {
            assert!(cmdline_len <= max);
            let cmdline = "k".repeat(cmdline_len);
            boot::write_boot_data(mem, &cmdline, &params).expect("boot data fits in guest RAM");
        }
        Err(boot::Error::CmdlineTooLong { .. }) => assert!(cmdline_len > max),
        Err(e) => panic!("zero page: {e}"),
    }
}

/// What `load_kernel` promises about a kernel it accepted.
fn check_loaded(mem: &GuestMem, kernel: &LoadedKernel) {
    assert!(
        kernel
            .end
            .checked_add(KERNEL_HEADROOM)
            .is_some_and(|need| need <= low_ram_end(mem)),
        "kernel ending at {:#x} accepted in {MEM_SIZE:#x} bytes of RAM",
        kernel.end
    );
    let mut byte = [0u8; 1];
    mem.read_slice(&mut byte, GuestAddress(kernel.end.saturating_sub(1)))
        .expect("the kernel's last byte is in guest RAM");
}

/// A little ELF64 `vmlinux`: one PT_LOAD segment of `code` at 16 MiB, and optionally a PT_NOTE
/// segment holding a Xen PVH entry note.
pub fn elf_image(code: &[u8], pvh_note: bool) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let phnum: u16 = if pvh_note { 2 } else { 1 };
    let note_at = EHDR + PHDR * usize::from(phnum);
    // namesz 4 ("Xen\0"), descsz 4, type 18 (XEN_ELFNOTE_PHYS32_ENTRY), the entry address.
    let mut note = Vec::new();
    if pvh_note {
        for v in [4u32, 4, 18] {
            note.extend_from_slice(&v.to_le_bytes());
        }
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&0x100_0000u32.to_le_bytes());
    }
    let code_at = (note_at + note.len()).next_multiple_of(16);
    let load_addr = 0x100_0000u64;

    let mut img = vec![0u8; code_at];
    img[..4].copy_from_slice(b"\x7fELF");
    img[4] = 2; // ELFCLASS64
    img[5] = 1; // little-endian
    img[6] = 1; // EV_CURRENT
    img[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    img[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    img[20..24].copy_from_slice(&1u32.to_le_bytes());
    img[24..32].copy_from_slice(&load_addr.to_le_bytes()); // e_entry
    img[32..40].copy_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    img[52..54].copy_from_slice(&(EHDR as u16).to_le_bytes()); // e_ehsize
    img[54..56].copy_from_slice(&(PHDR as u16).to_le_bytes()); // e_phentsize
    img[56..58].copy_from_slice(&phnum.to_le_bytes());
    let mut phdr = |index: usize, kind: u32, offset: usize, addr: u64, len: usize| {
        let p = &mut img[EHDR + PHDR * index..EHDR + PHDR * (index + 1)];
        p[0..4].copy_from_slice(&kind.to_le_bytes());
        p[4..8].copy_from_slice(&7u32.to_le_bytes()); // RWX
        p[8..16].copy_from_slice(&(offset as u64).to_le_bytes());
        p[16..24].copy_from_slice(&addr.to_le_bytes()); // p_vaddr
        p[24..32].copy_from_slice(&addr.to_le_bytes()); // p_paddr
        p[32..40].copy_from_slice(&(len as u64).to_le_bytes()); // p_filesz
        p[40..48].copy_from_slice(&(len as u64).to_le_bytes()); // p_memsz
        p[48..56].copy_from_slice(&4u64.to_le_bytes()); // p_align
    };
    phdr(0, 1, code_at, load_addr, code.len()); // PT_LOAD
    if pvh_note {
        phdr(1, 4, note_at, 0, note.len()); // PT_NOTE
    }
    img[note_at..note_at + note.len()].copy_from_slice(&note);
    img.extend_from_slice(code);
    img
}

/// A little bzImage: `setup_sects` sectors of real-mode setup after the boot sector, then the
/// protected-mode payload, with boot protocol `version` and `xloadflags`.
pub fn bzimage(setup_sects: u8, version: u16, xloadflags: u16, payload: &[u8]) -> Vec<u8> {
    // A boot sector saying 0 setup sectors means 4 (Documentation/arch/x86/boot.rst).
    let sects = if setup_sects == 0 { 4 } else { setup_sects };
    let mut img = vec![0u8; (usize::from(sects) + 1) * 512];
    img[0x1f1] = setup_sects;
    img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&version.to_le_bytes());
    img[0x211] = 1; // loadflags: LOADED_HIGH
    img[0x214..0x218].copy_from_slice(&(HIMEM_START as u32).to_le_bytes()); // code32_start
    img[0x218..0x21c].copy_from_slice(&0u32.to_le_bytes()); // ramdisk_image
    img[0x22c..0x230].copy_from_slice(&0x37ff_ffffu32.to_le_bytes()); // initrd_addr_max
    img[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes()); // kernel_alignment
    img[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
    img[0x238..0x23c].copy_from_slice(&255u32.to_le_bytes()); // cmdline_size
    img.extend_from_slice(payload);
    img
}

fn seed(name: &'static str, cmdline_len: u16, initrd: u32, image: &[u8]) -> Seed {
    Seed {
        name,
        data: Writer::new()
            .u16(cmdline_len)
            .u32(initrd)
            .bytes(image)
            .finish(),
    }
}

pub fn seeds() -> Vec<Seed> {
    let code: Vec<u8> = (0..600u32).map(|i| (i * 13) as u8).collect();
    vec![
        seed("elf", 40, 0x1_0000, &elf_image(&code, false)),
        seed("elf-pvh-note", 2047, 0, &elf_image(&code, true)),
        seed("bzimage", 200, 0x2345, &bzimage(2, 0x020f, 1, &code)),
        seed(
            "bzimage-long-cmdline",
            300,
            0,
            &bzimage(0, 0x020c, 3, &code),
        ),
        seed("bzimage-old-protocol", 10, 0, &bzimage(4, 0x020b, 1, &code)),
    ]
}

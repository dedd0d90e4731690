//! Kernel command-line parsing: words separated by spaces (double quotes group a value
//! with spaces, as in Linux), `key=value` lookups, numbers with Linux's memparse
//! suffixes, and the `virtio_mmio.device=<size>@<addr>:<irq>[:<id>]` entries VMMs use to
//! declare virtio-mmio devices.

pub struct Cmdline<'a> {
    text: &'a [u8],
}

/// Iterator over the words of a command line.
pub struct Words<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        while let [b' ' | b'\t' | b'\n', tail @ ..] = self.rest {
            self.rest = tail;
        }
        if self.rest.is_empty() {
            return None;
        }
        let mut in_quotes = false;
        let mut i = 0;
        while i < self.rest.len() {
            match self.rest[i] {
                b'"' => in_quotes = !in_quotes,
                b' ' | b'\t' | b'\n' if !in_quotes => break,
                _ => {}
            }
            i += 1;
        }
        let (word, tail) = self.rest.split_at(i);
        self.rest = tail;
        Some(word)
    }
}

impl<'a> Cmdline<'a> {
    pub fn new(text: &'a [u8]) -> Self {
        Cmdline { text }
    }

    pub fn words(&self) -> Words<'a> {
        Words { rest: self.text }
    }

    /// Values of every `key=value` word with this key, in order (quotes removed from
    /// around the value).
    pub fn values(&self, key: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        let key = key.as_bytes();
        self.words().filter_map(move |w| {
            let value = w.strip_prefix(key)?.strip_prefix(b"=")?;
            Some(unquote(value))
        })
    }

    /// The value of the first `key=value` word.
    pub fn get(&self, key: &'a str) -> Option<&'a [u8]> {
        self.values(key).next()
    }

    /// A numeric `key=value`, with [`parse_number`] syntax.
    pub fn get_u64(&self, key: &'a str) -> Option<u64> {
        parse_number(self.get(key)?)
    }

    /// The virtio-mmio devices declared with `virtio_mmio.device=...`; malformed entries
    /// are skipped.
    #[allow(dead_code)]
    pub fn virtio_mmio_devices(&self) -> impl Iterator<Item = VirtioMmioDevice> + 'a {
        self.values("virtio_mmio.device")
            .filter_map(VirtioMmioDevice::parse)
    }
}

fn unquote(v: &[u8]) -> &[u8] {
    match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => v,
    }
}

/// Parses a number as Linux's `memparse`: decimal, or hex with `0x`, optionally followed
/// by one of K, M, G, T (binary multiples, either case). The whole input must be used.
pub fn parse_number(s: &[u8]) -> Option<u64> {
    let (end, value) = parse_prefix(s)?;
    (end == s.len()).then_some(value)
}

/// Parses a number at the start of `s` (see [`parse_number`]); returns the bytes used and
/// the value.
fn parse_prefix(s: &[u8]) -> Option<(usize, u64)> {
    let (radix, mut i) = match s {
        [b'0', b'x' | b'X', ..] => (16, 2),
        _ => (10, 0),
    };
    let start = i;
    let mut value: u64 = 0;
    while i < s.len() {
        let digit = match s[i] {
            c @ b'0'..=b'9' => (c - b'0') as u64,
            c @ b'a'..=b'f' if radix == 16 => (c - b'a' + 10) as u64,
            c @ b'A'..=b'F' if radix == 16 => (c - b'A' + 10) as u64,
            _ => break,
        };
        value = value.checked_mul(radix)?.checked_add(digit)?;
        i += 1;
    }
    if i == start {
        return None;
    }
    let shift = match s.get(i) {
        Some(b'k' | b'K') => 10,
        Some(b'm' | b'M') => 20,
        Some(b'g' | b'G') => 30,
        Some(b't' | b'T') => 40,
        _ => 0,
    };
    if shift != 0 {
        i += 1;
        value = value.checked_mul(1 << shift)?;
    }
    Some((i, value))
}

/// One `virtio_mmio.device=<size>@<addr>:<irq>[:<id>]` entry (Linux's format).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(dead_code)]
pub struct VirtioMmioDevice {
    pub size: u64,
    pub addr: u64,
    pub irq: u32,
    pub id: Option<u32>,
}

impl VirtioMmioDevice {
    pub fn parse(s: &[u8]) -> Option<VirtioMmioDevice> {
        let (n, size) = parse_prefix(s)?;
        let s = s[n..].strip_prefix(b"@")?;
        let (n, addr) = parse_prefix(s)?;
        let s = s[n..].strip_prefix(b":")?;
        let (n, irq) = parse_prefix(s)?;
        let s = &s[n..];
        let id = match s {
            [] => None,
            [b':', rest @ ..] => Some(parse_number(rest)? as u32),
            _ => return None,
        };
        Some(VirtioMmioDevice {
            size,
            addr,
            irq: u32::try_from(irq).ok()?,
            id,
        })
    }
}

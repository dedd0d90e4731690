//! Reading a fuzz input as a stream of little-endian fields, and writing seeds the same way.
//!
//! Every read succeeds: past the end of the input a field reads as zero and a byte string as
//! empty, so any input decodes to something and the fuzzer never wastes a run on a parse error.

/// A fuzz input read front to back.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.data.split_at(n.min(self.data.len()));
        self.data = tail;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let b = self.bytes(N);
        out[..b.len()].copy_from_slice(b);
        out
    }

    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }

    /// A byte string with a one-byte length in front.
    pub fn short_bytes(&mut self) -> &'a [u8] {
        let n = self.u8();
        self.bytes(usize::from(n))
    }

    /// A byte string with a two-byte length in front.
    pub fn long_bytes(&mut self) -> &'a [u8] {
        let n = self.u16();
        self.bytes(usize::from(n))
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// Builds an input field by field, as [`Input`] reads it back.
#[derive(Clone, Debug, Default)]
pub struct Writer(Vec<u8>);

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }

    /// [`Input::short_bytes`]: at most 255 bytes.
    pub fn short_bytes(&mut self, b: &[u8]) -> &mut Self {
        let n = u8::try_from(b.len()).expect("short byte string");
        self.u8(n).bytes(b)
    }

    /// [`Input::long_bytes`]: at most 65535 bytes.
    pub fn long_bytes(&mut self, b: &[u8]) -> &mut Self {
        let n = u16::try_from(b.len()).expect("long byte string");
        self.u16(n).bytes(b)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_back_and_run_out_as_zero() {
        let data = Writer::new()
            .u8(1)
            .u16(0x0203)
            .u32(0x0405_0607)
            .u64(8)
            .short_bytes(b"ab")
            .long_bytes(b"cde")
            .finish();
        let mut input = Input::new(&data);
        assert_eq!(input.u8(), 1);
        assert_eq!(input.u16(), 0x0203);
        assert_eq!(input.u32(), 0x0405_0607);
        assert_eq!(input.u64(), 8);
        assert_eq!(input.short_bytes(), b"ab");
        assert_eq!(input.long_bytes(), b"cde");
        assert!(input.is_empty());
        assert_eq!(input.u32(), 0);
        assert_eq!(input.long_bytes(), b"");
        let mut short = Input::new(&[0xff]);
        assert_eq!(short.u16(), 0xff);
    }
}

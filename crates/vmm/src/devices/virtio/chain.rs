//! Descriptor chains as a device sees them, checked before anything is read or written: the chain
//! ends, is no longer than its queue, lies in guest RAM, and puts device-readable buffers before
//! device-writable ones. What a chain carries is then a byte stream in each direction
//! ([`Bufs`]), however the driver split it into descriptors (the spec forbids assuming a layout).

use virtio_queue::DescriptorChain;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use crate::memory::GuestMem;

/// A chain that cannot be walked to its end: no status can be written for it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error(
        "descriptor chain {head} does not end (a loop, a bad index, an unreadable table or more than 4 GiB in all)"
    )]
    Unterminated { head: u16 },
    #[error("descriptor chain {head} is longer than its queue ({max} descriptors)")]
    TooLong { head: u16, max: usize },
}

/// A chain whose buffers cannot be used as they are.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("a device-readable buffer follows a device-writable one")]
    ReadableAfterWritable,
    #[error("{0} device-readable bytes in a chain the device only writes to")]
    Readable(u64),
    #[error("{0} device-writable bytes in a chain the device only reads")]
    Writable(u64),
    #[error("chain of {len} bytes is shorter than the {min} it needs")]
    Short { len: u64, min: u64 },
}

/// A descriptor chain that was walked to its end.
#[derive(Debug)]
pub struct Chain {
    head: u16,
    descs: Vec<Descriptor>,
}

/// Walk `chain`, allowing at most `max_len` descriptors (the queue size).
pub fn read_chain(chain: DescriptorChain<&GuestMem>, max_len: usize) -> Result<Chain, ChainError> {
    let head = chain.head_index();
    let mut descs = Vec::new();
    // The iterator stops quietly on a loop (after queue-size steps), a next index past the
    // table, an unreadable descriptor or a bad indirect table; the last descriptor it gave then
    // still says "next", which is how we tell such an end from a real one.
    for desc in chain {
        if descs.len() == max_len {
            return Err(ChainError::TooLong { head, max: max_len });
        }
        descs.push(desc);
    }
    match descs.last() {
        Some(last) if !last.has_next() => Ok(Chain { head, descs }),
        _ => Err(ChainError::Unterminated { head }),
    }
}

impl Chain {
    /// Every descriptor's length, summed (what a rate limiter counts).
    pub fn total_len(&self) -> u64 {
        self.descs.iter().map(|d| u64::from(d.len())).sum()
    }

    /// The head index, which goes back to the driver in the used ring.
    pub fn head(&self) -> u16 {
        self.head
    }

    /// The chain's last byte, if it is device-writable and in guest memory: where a request's
    /// status byte goes.
    pub fn status_addr(&self, mem: &GuestMem) -> Option<GuestAddress> {
        let last = self.descs.last()?;
        if !last.is_write_only() || last.len() == 0 {
            return None;
        }
        let addr = last.addr().checked_add(u64::from(last.len()) - 1)?;
        mem.check_range(addr, 1).then_some(addr)
    }

    /// The device-readable and device-writable buffers, each checked to lie in guest memory.
    pub fn split(&self, mem: &GuestMem) -> Result<(Bufs, Bufs), LayoutError> {
        let mut readable = Vec::new();
        let mut writable = Vec::new();
        for desc in &self.descs {
            let buf = Buf {
                addr: desc.addr(),
                len: desc.len(),
            };
            if !mem.check_range(buf.addr, buf.len as usize) {
                return Err(LayoutError::OutsideMemory {
                    addr: buf.addr.raw_value(),
                    len: buf.len,
                });
            }
            if desc.is_write_only() {
                writable.push(buf);
            } else if writable.is_empty() {
                readable.push(buf);
            } else {
                return Err(LayoutError::ReadableAfterWritable);
            }
        }
        Ok((Bufs(readable), Bufs(writable)))
    }

    /// The buffers of a chain the device only writes to (a receive buffer, an entropy
    /// request), at least `min_len` bytes of them.
    pub fn writable_only(&self, mem: &GuestMem, min_len: u64) -> Result<Bufs, LayoutError> {
        let (readable, writable) = self.split(mem)?;
        if !readable.is_empty() {
            return Err(LayoutError::Readable(readable.len()));
        }
        at_least(writable, min_len)
    }

    /// The buffers of a chain the device only reads (a frame or packet to send on), at least
    /// `min_len` bytes of them.
    pub fn readable_only(&self, mem: &GuestMem, min_len: u64) -> Result<Bufs, LayoutError> {
        let (readable, writable) = self.split(mem)?;
        if !writable.is_empty() {
            return Err(LayoutError::Writable(writable.len()));
        }
        at_least(readable, min_len)
    }
}

fn at_least(bufs: Bufs, min: u64) -> Result<Bufs, LayoutError> {
    let len = bufs.len();
    if len < min {
        return Err(LayoutError::Short { len, min });
    }
    Ok(bufs)
}

/// One guest buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buf {
    pub addr: GuestAddress,
    pub len: u32,
}

/// Guest buffers read or written as one byte stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bufs(Vec<Buf>);

impl From<Vec<Buf>> for Bufs {
    fn from(bufs: Vec<Buf>) -> Self {
        Self(bufs)
    }
}

impl Bufs {
    /// Total length in bytes.
    pub fn len(&self) -> u64 {
        self.0.iter().map(|b| u64::from(b.len)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = &Buf> {
        self.0.iter().filter(|b| b.len > 0)
    }

    /// The first `at` bytes and the rest; `None` if there are fewer than `at` bytes.
    pub fn split_at(&self, at: u64) -> Option<(Bufs, Bufs)> {
        if at > self.len() {
            return None;
        }
        let (mut head, mut tail) = (Vec::new(), Vec::new());
        let mut left = at;
        for buf in self.iter() {
            let len = u64::from(buf.len);
            if left >= len {
                head.push(*buf);
                left -= len;
            } else if left > 0 {
                // `left` < `buf.len`, so it fits in a u32 and the address stays in the buffer.
                let cut = left as u32;
                head.push(Buf {
                    addr: buf.addr,
                    len: cut,
                });
                tail.push(Buf {
                    addr: buf.addr.unchecked_add(u64::from(cut)),
                    len: buf.len - cut,
                });
                left = 0;
            } else {
                tail.push(*buf);
            }
        }
        Some((Bufs(head), Bufs(tail)))
    }

    /// Fill `out` from the start of the stream.
    pub fn read_exact(
        &self,
        mem: &GuestMem,
        out: &mut [u8],
    ) -> Result<(), vm_memory::GuestMemoryError> {
        let mut done = 0;
        for buf in self.iter() {
            if done == out.len() {
                break;
            }
            let n = (buf.len as usize).min(out.len() - done);
            mem.read_slice(&mut out[done..done + n], buf.addr)?;
            done += n;
        }
        if done < out.len() {
            return Err(vm_memory::GuestMemoryError::PartialBuffer {
                expected: out.len(),
                completed: done,
            });
        }
        Ok(())
    }

    /// Write `data` at the start of the stream; returns how many bytes fit.
    pub fn write(&self, mem: &GuestMem, data: &[u8]) -> Result<usize, vm_memory::GuestMemoryError> {
        let mut done = 0;
        for buf in self.iter() {
            if done == data.len() {
                break;
            }
            let n = (buf.len as usize).min(data.len() - done);
            mem.write_slice(&data[done..done + n], buf.addr)?;
            done += n;
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bufs(list: &[(u64, u32)]) -> Bufs {
        Bufs(
            list.iter()
                .map(|&(a, l)| Buf {
                    addr: GuestAddress(a),
                    len: l,
                })
                .collect(),
        )
    }

    #[test]
    fn split_at_cuts_inside_a_buffer() {
        let b = bufs(&[(0x1000, 10), (0x2000, 6)]);
        let (head, tail) = b.split_at(12).unwrap();
        assert_eq!(head, bufs(&[(0x1000, 10), (0x2000, 2)]));
        assert_eq!(tail, bufs(&[(0x2002, 4)]));
        let (head, tail) = b.split_at(10).unwrap();
        assert_eq!(head, bufs(&[(0x1000, 10)]));
        assert_eq!(tail, bufs(&[(0x2000, 6)]));
        assert!(b.split_at(17).is_none());
        assert_eq!(b.split_at(16).unwrap().1.len(), 0);
    }

    #[test]
    fn one_way_chains_refuse_the_other_direction_and_short_ones() {
        let mem = crate::memory::create(1 << 20).unwrap();
        let write = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
        let chain = |descs: &[(u64, u32, u16)]| Chain {
            head: 0,
            descs: descs
                .iter()
                .map(|&(a, l, f)| Descriptor::new(a, l, f, 0))
                .collect(),
        };
        let rx = chain(&[(0x1000, 8, write), (0x2000, 8, write)]);
        assert_eq!(rx.writable_only(&mem, 16).unwrap().len(), 16);
        assert_eq!(
            rx.writable_only(&mem, 17),
            Err(LayoutError::Short { len: 16, min: 17 })
        );
        assert_eq!(rx.readable_only(&mem, 0), Err(LayoutError::Writable(16)));
        let tx = chain(&[(0x1000, 4, 0), (0x2000, 0, write)]);
        assert_eq!(tx.readable_only(&mem, 4).unwrap().len(), 4);
        assert_eq!(tx.writable_only(&mem, 0), Err(LayoutError::Readable(4)));
    }

    #[test]
    fn stream_reads_and_writes_across_buffers() {
        let mem = crate::memory::create(1 << 20).unwrap();
        let b = bufs(&[(0x1000, 3), (0x3000, 0), (0x2000, 5)]);
        assert_eq!(b.write(&mem, &[1, 2, 3, 4, 5, 6, 7, 8, 9]).unwrap(), 8);
        let mut out = [0u8; 8];
        b.read_exact(&mem, &mut out).unwrap();
        assert_eq!(out, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(b.read_exact(&mem, &mut [0u8; 9]).is_err());
    }
}

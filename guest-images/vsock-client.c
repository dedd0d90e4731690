/*
 * kite-vsock: a tiny AF_VSOCK client for the Kite guest's initramfs (busybox has none).
 *
 *   kite-vsock PORT MESSAGE
 *
 * Connects to the host (CID 2) on PORT, sends MESSAGE and a newline, then copies what the
 * host sends back to stdout until a newline has arrived or the host closes its end.
 * Exit status: 0 after a reply line, 1 on any failure (one line on stderr names the step and
 * the errno), 2 on bad arguments.
 *
 * Built freestanding (no libc, raw system calls): a static glibc binary would add ~700 KiB
 * to the initramfs, which a guest whose ring 0 is emulated copies at a few hundred KiB/s.
 */
#include <linux/socket.h>
#include <linux/vm_sockets.h>
#include <asm/unistd.h>

typedef unsigned long size_t;
typedef long ssize_t;

static long sys3(long nr, long a, long b, long c)
{
	long ret;

	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(nr), "D"(a), "S"(b), "d"(c)
			 : "rcx", "r11", "memory");
	return ret;
}

static size_t len(const char *s)
{
	size_t n = 0;

	while (s[n])
		n++;
	return n;
}

static void out(int fd, const char *s)
{
	sys3(__NR_write, fd, (long)s, (long)len(s));
}

/* One line on stderr: "kite-vsock: WHAT failed: errno N". */
static int fail(const char *what, long err)
{
	char num[24];
	int i = sizeof(num) - 1;
	unsigned long e = (unsigned long)-err;

	num[i] = 0;
	do {
		num[--i] = (char)('0' + e % 10);
		e /= 10;
	} while (e && i > 0);
	out(2, "kite-vsock: ");
	out(2, what);
	out(2, " failed: errno ");
	out(2, num + i);
	out(2, "\n");
	return 1;
}

static int run(int argc, char **argv)
{
	struct sockaddr_vm addr = { 0 };
	char buf[512];
	unsigned int port = 0;
	long fd, n, i, got_newline = 0;
	size_t mlen;
	const char *p;

	if (argc != 3) {
		out(2, "usage: kite-vsock PORT MESSAGE\n");
		return 2;
	}
	for (p = argv[1]; *p; p++) {
		if (*p < '0' || *p > '9') {
			out(2, "kite-vsock: PORT must be a number\n");
			return 2;
		}
		port = port * 10 + (unsigned int)(*p - '0');
	}
	mlen = len(argv[2]);
	if (mlen + 1 > sizeof(buf)) {
		out(2, "kite-vsock: MESSAGE is longer than 511 bytes\n");
		return 2;
	}

	addr.svm_family = AF_VSOCK;
	addr.svm_cid = VMADDR_CID_HOST;
	addr.svm_port = port;
	fd = sys3(__NR_socket, AF_VSOCK, 1 /* SOCK_STREAM */, 0);
	if (fd < 0)
		return fail("socket(AF_VSOCK)", fd);
	n = sys3(__NR_connect, fd, (long)&addr, sizeof(addr));
	if (n < 0)
		return fail("connect", n);

	for (i = 0; i < (long)mlen; i++)
		buf[i] = argv[2][i];
	buf[mlen] = '\n';
	n = sys3(__NR_write, fd, (long)buf, (long)mlen + 1);
	if (n != (long)mlen + 1)
		return fail("write", n < 0 ? n : -5 /* EIO: short write */);

	while (!got_newline) {
		n = sys3(__NR_read, fd, (long)buf, sizeof(buf));
		if (n < 0)
			return fail("read", n);
		if (n == 0)
			break;
		for (i = 0; i < n; i++)
			got_newline |= buf[i] == '\n';
		sys3(__NR_write, 1, (long)buf, n);
	}
	if (!got_newline) {
		out(2, "kite-vsock: the host closed the connection before a reply line\n");
		return 1;
	}
	sys3(__NR_close, fd, 0, 0);
	return 0;
}

/* The kernel starts us with argc at the stack pointer, argv right after it. */
__attribute__((used)) static void start_c(long *sp)
{
	sys3(__NR_exit, run((int)sp[0], (char **)(sp + 1)), 0, 0);
}

__asm__(".globl _start\n"
	"_start:\n"
	"	mov %rsp, %rdi\n"
	"	and $-16, %rsp\n"
	"	call start_c\n"
	"	hlt\n");

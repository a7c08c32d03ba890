"""Kernel-side steering for a gateway of N worker processes.

Worker ``k`` of ``n`` owns the sessions whose receiver index is ``k`` modulo ``n`` and the tunnel
addresses whose low 32 bits are ``k`` modulo ``n`` (IPv4 and IPv6 alike). Two kernel programs send
each packet straight to its owner:

* packets the kernel routes into the TUN interface: a multi-queue TUN (one queue per worker, opened
  in worker order) and an eBPF program attached with TUNSETSTEERINGEBPF that picks the queue from
  the packet's destination address;
* datagrams arriving on the gateway's UDP port: a SO_REUSEPORT group of one socket per worker
  (bound in worker order) and a classic BPF program attached with SO_ATTACH_REUSEPORT_CBPF that
  picks the socket from the receiver index of handshake-final and transport messages; every other
  datagram is spread by the kernel's usual 4-tuple hash.

Both programs index the kernel's list of queues (sockets) of the device (group), which is the order
they were opened (bound) in as long as none is closed: closing one moves the last into its place.
The descriptors must therefore stay open for the life of the gateway (e.g. held by the parent of the
workers), a worker's exit must not close them.

The UDP program reads the cleartext message header, so it must not be attached when the gateway's
obfuscation is on: the masked headers would be read as random types and indices.

No maintained Python library assembles and loads eBPF without LLVM/clang (bcc and the libbpf
bindings compile C at run time), so the few instructions are assembled here and loaded with the
bpf(2) system call through ctypes; the classic BPF program goes in with setsockopt.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import ipaddress
import os
import platform
import socket
import struct
import sys
from typing import Final

from veilgate.tun.device import open_queue

MAX_QUEUES: Final = 256
"""The kernel's most queues of one TUN device (MAX_TAP_QUEUES) and so the most workers here."""

TUNSETSTEERINGEBPF: Final = 0x800454E0  # _IOR('T', 224, int)
SO_ATTACH_REUSEPORT_CBPF: Final = 51
SO_DETACH_REUSEPORT_BPF: Final = 68

TYPE_HANDSHAKE_FINAL: Final = 3
TYPE_TRANSPORT: Final = 5
RECEIVER_OFFSET: Final = 4
"""The wire format (veilgate.protocol.messages, which this layer does not import): the type byte
at offset 0, and the receiver index (u32, little-endian) at offset 4 of handshake-final and
transport messages."""

IPV4_DST_OFFSET: Final = 16
IPV6_DST_LOW32_OFFSET: Final = 36
"""The last 4 bytes of the IPv6 destination (bytes 24-39 of the header)."""

FALLBACK: Final = 0xFFFFFFFF
"""What the UDP program returns for other datagrams: no socket has that index, so the kernel picks
one by its 4-tuple hash (net/core/sock_reuseport.c: run_bpf_filter returns no socket for an index
at or past the group's size, and reuseport_select_sock then selects by hash)."""


class SteeringError(Exception):
    pass


def worker_of_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address | int, n: int) -> int:
    """The worker owning a tunnel address (or its integer value): its low 32 bits modulo ``n``."""
    return (int(address) & 0xFFFFFFFF) % n


def worker_of_index(index: int, n: int) -> int:
    """The worker owning a session by its receiver index."""
    return index % n


def _check_n(n: int) -> None:
    if not 1 <= n <= MAX_QUEUES:
        raise ValueError(f"the number of workers must be 1 to {MAX_QUEUES}: {n}")


# ---- the multi-queue TUN


def open_tun_queues(name: str, n: int, *, vnet_hdr: bool = False) -> tuple[list[int], bool]:
    """Open ``n`` queues of TUN interface ``name`` (IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE), queue k
    at position k of the list; non-blocking descriptors. The interface goes when the last closes.
    Also returns whether the queues carry the virtio-net header: with ``vnet_hdr`` the first queue
    asks for IFF_VNET_HDR and every other queue takes what the first got (the kernel refuses a
    queue whose flags differ).

    The name must be literal (no ``%d``): every queue attaches by it.
    """
    _check_n(n)
    if "%" in name:
        raise ValueError(f"a multi-queue interface needs a literal name: {name!r}")
    fds: list[int] = []
    try:
        for _ in range(n):
            fd, _actual, vnet_hdr = open_queue(name, multi_queue=True, vnet_hdr=vnet_hdr)
            fds.append(fd)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds, vnet_hdr


# ---- eBPF, assembled by hand (include/uapi/linux/bpf.h, bpf_common.h)

# Instruction classes
BPF_LD: Final = 0x00
BPF_JMP: Final = 0x05
BPF_ALU: Final = 0x04
BPF_ALU64: Final = 0x07
BPF_RET: Final = 0x06  # classic only
BPF_MISC: Final = 0x07  # classic only
# Sizes and modes of loads
BPF_W: Final = 0x00
BPF_B: Final = 0x10
BPF_ABS: Final = 0x20
BPF_LEN: Final = 0x80
# ALU and jump operations; operand sources
BPF_OR: Final = 0x40
BPF_AND: Final = 0x50
BPF_LSH: Final = 0x60
BPF_MOD: Final = 0x90
BPF_MOV: Final = 0xB0
BPF_JA: Final = 0x00
BPF_JEQ: Final = 0x10
BPF_JGE: Final = 0x30
BPF_EXIT: Final = 0x90
BPF_K: Final = 0x00
BPF_X: Final = 0x08
BPF_A: Final = 0x10  # classic return of the accumulator
BPF_TAX: Final = 0x00  # classic: X = A

R0, R1, R6 = 0, 1, 6

BPF_PROG_LOAD: Final = 5
BPF_PROG_TYPE_SOCKET_FILTER: Final = 1
LICENSE: Final = b"AGPL-3.0-or-later\x00"  # the program calls no GPL-only helper

_BPF_SYSCALL: Final = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One struct bpf_insn: code, dst_reg:4 and src_reg:4 (bit-field order follows the host's
    byte order), off (s16), imm (s32)."""
    regs = (src << 4) | dst if sys.byteorder == "little" else (dst << 4) | src
    if imm > 0x7FFFFFFF:
        imm -= 1 << 32
    return struct.pack("=BBhi", code, regs, off, imm)


def mov64_reg(dst: int, src: int) -> bytes:
    return _insn(BPF_ALU64 | BPF_MOV | BPF_X, dst, src)


def mov32_imm(dst: int, imm: int) -> bytes:
    return _insn(BPF_ALU | BPF_MOV | BPF_K, dst, imm=imm)


def alu32_imm(op: int, dst: int, imm: int) -> bytes:
    return _insn(BPF_ALU | op | BPF_K, dst, imm=imm)


def ld_abs(size: int, offset: int) -> bytes:
    """R0 = the packet's ``size`` bytes at ``offset`` from skb->data, read big-endian (the legacy
    packet load; needs the context in R6; an out-of-range offset ends the program with 0)."""
    return _insn(BPF_LD | size | BPF_ABS, imm=offset)


def jmp_imm(op: int, dst: int, imm: int, skip: int) -> bytes:
    """If ``dst op imm``, skip the next ``skip`` instructions."""
    return _insn(BPF_JMP | op | BPF_K, dst, off=skip, imm=imm)


def ja(skip: int) -> bytes:
    return _insn(BPF_JMP | BPF_JA, off=skip)


def exit_insn() -> bytes:
    return _insn(BPF_JMP | BPF_EXIT)


def tun_steering_program(n: int) -> bytes:
    """The TUN queue of a packet: low 32 bits of its destination modulo ``n``.

    The kernel (drivers/net/tun.c, tun_ebpf_select_queue) runs this on the packet being sent into
    the TUN, from the device's transmit path, where skb->data is the IP header (a TUN has no link
    header), so LD_ABS offsets count from the first byte of the IP packet. It keeps the result in
    a u16 and takes it modulo the number of queues: the program takes the modulo itself (a raw
    32-bit value would be cut to its low 16 bits first), and the kernel's modulo then keeps it.
    """
    _check_n(n)
    program = [
        mov64_reg(R6, R1),  # 0: LD_ABS reads the skb in R6
        ld_abs(BPF_B, 0),  # 1: R0 = first byte
        alu32_imm(BPF_AND, R0, 0xF0),  # 2: the version nibble
        jmp_imm(BPF_JEQ, R0, 0x40, 3),  # 3: IPv4 -> 7
        jmp_imm(BPF_JEQ, R0, 0x60, 4),  # 4: IPv6 -> 9
        mov32_imm(R0, 0),  # 5: anything else: queue 0
        exit_insn(),  # 6
        ld_abs(BPF_W, IPV4_DST_OFFSET),  # 7: R0 = IPv4 destination
        ja(1),  # 8: -> 10
        ld_abs(BPF_W, IPV6_DST_LOW32_OFFSET),  # 9: R0 = low 32 bits of the IPv6 destination
        alu32_imm(BPF_MOD, R0, n),  # 10: unsigned, 32 bits
        exit_insn(),  # 11
    ]
    return b"".join(program)


class _ProgLoadAttr(ctypes.Structure):
    """The BPF_PROG_LOAD part of union bpf_attr, up to prog_name."""

    _fields_ = (
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
    )


def load_socket_filter(program: bytes, name: str) -> int:
    """Load an eBPF socket-filter program; returns its descriptor. On refusal, the verifier's log
    is in the error."""
    machine = platform.machine()
    number = _BPF_SYSCALL.get(machine)
    if number is None:
        raise SteeringError(f"no bpf(2) system call number known for {machine}")
    libc = ctypes.CDLL(None, use_errno=True)
    insns = ctypes.create_string_buffer(program, len(program))
    license_buf = ctypes.create_string_buffer(LICENSE, len(LICENSE))

    def attempt(log: ctypes.Array[ctypes.c_char] | None) -> int:
        attr = _ProgLoadAttr(
            prog_type=BPF_PROG_TYPE_SOCKET_FILTER,
            insn_cnt=len(program) // 8,
            insns=ctypes.addressof(insns),
            license=ctypes.addressof(license_buf),
            prog_name=name.encode()[:15],
        )
        if log is not None:
            attr.log_level, attr.log_size, attr.log_buf = 1, len(log), ctypes.addressof(log)
        fd = int(libc.syscall(number, BPF_PROG_LOAD, ctypes.byref(attr), ctypes.sizeof(attr)))
        return fd if fd >= 0 else -ctypes.get_errno()

    fd = attempt(None)
    if fd >= 0:
        return fd
    code = -fd
    log = ctypes.create_string_buffer(65536)
    fd = attempt(log)  # again, to get the verifier's reasons
    if fd >= 0:
        return fd
    detail = log.value.decode(errors="replace").strip()
    raise SteeringError(
        f"the kernel refused the {name} eBPF program: {os.strerror(code)}"
        + (f"; verifier: {detail}" if detail else "")
    )


def attach_tun_steering(queue_fd: int, n: int) -> None:
    """Steer every packet the kernel sends into the TUN to queue ``worker_of_address(dst, n)``
    (queue 0 for anything not IPv4 or IPv6). ``queue_fd`` is any queue of the device; the device
    must have ``n`` queues."""
    prog = load_socket_filter(tun_steering_program(n), "vg_tun_steer")
    try:
        fcntl.ioctl(queue_fd, TUNSETSTEERINGEBPF, struct.pack("i", prog))
    except OSError as exc:
        raise SteeringError(f"TUNSETSTEERINGEBPF failed: {exc.strerror}") from exc
    finally:
        os.close(prog)  # the device holds its own reference


def detach_tun_steering(queue_fd: int) -> None:
    """Back to the kernel's own queue choice (a flow hash)."""
    fcntl.ioctl(queue_fd, TUNSETSTEERINGEBPF, struct.pack("i", -1))


# ---- classic BPF for the SO_REUSEPORT group


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def _cbpf(code: int, k: int = 0, jt: int = 0, jf: int = 0) -> bytes:
    """One struct sock_filter: code (u16), jt, jf (u8: instructions to skip), k (u32)."""
    return struct.pack("=HBBI", code, jt, jf, k)


def udp_steering_program(n: int) -> bytes:
    """The socket of a datagram: receiver index modulo ``n`` for types 3 and 5, else FALLBACK.

    The kernel runs it with skb->data at the UDP payload (run_bpf_filter pulls the UDP header).
    Classic BPF loads are big-endian and it has no byte swap, while the index is little-endian: the
    four bytes are loaded one by one, most significant (offset 7) first, and shifted into place
    through X. BPF_MOD (kernel 3.7 and later) then takes the modulo on the accumulator.
    """
    _check_n(n)
    r = RECEIVER_OFFSET
    program = [
        _cbpf(BPF_LD | BPF_W | BPF_LEN),  # 0: A = payload length
        _cbpf(BPF_JMP | BPF_JGE | BPF_K, r + 4, jt=0, jf=18),  # 1: shorter than the index -> 20
        _cbpf(BPF_LD | BPF_B | BPF_ABS, 0),  # 2: A = message type
        _cbpf(BPF_JMP | BPF_JEQ | BPF_K, TYPE_TRANSPORT, jt=1, jf=0),  # 3: -> 5
        _cbpf(BPF_JMP | BPF_JEQ | BPF_K, TYPE_HANDSHAKE_FINAL, jt=0, jf=15),  # 4: other -> 20
        _cbpf(BPF_LD | BPF_B | BPF_ABS, r + 3),  # 5
        _cbpf(BPF_ALU | BPF_LSH | BPF_K, 8),  # 6
        _cbpf(BPF_MISC | BPF_TAX),  # 7: X = b3 << 8
        _cbpf(BPF_LD | BPF_B | BPF_ABS, r + 2),  # 8
        _cbpf(BPF_ALU | BPF_OR | BPF_X),  # 9
        _cbpf(BPF_ALU | BPF_LSH | BPF_K, 8),  # 10
        _cbpf(BPF_MISC | BPF_TAX),  # 11: X = (b3 << 8 | b2) << 8
        _cbpf(BPF_LD | BPF_B | BPF_ABS, r + 1),  # 12
        _cbpf(BPF_ALU | BPF_OR | BPF_X),  # 13
        _cbpf(BPF_ALU | BPF_LSH | BPF_K, 8),  # 14
        _cbpf(BPF_MISC | BPF_TAX),  # 15
        _cbpf(BPF_LD | BPF_B | BPF_ABS, r),  # 16
        _cbpf(BPF_ALU | BPF_OR | BPF_X),  # 17: A = the receiver index
        _cbpf(BPF_ALU | BPF_MOD | BPF_K, n),  # 18
        _cbpf(BPF_RET | BPF_A),  # 19
        _cbpf(BPF_RET | BPF_K, FALLBACK),  # 20
    ]
    return b"".join(program)


def attach_udp_steering(sock: socket.socket, n: int) -> None:
    """Steer the datagrams of ``sock``'s SO_REUSEPORT group of ``n`` sockets (bound in worker
    order): types 3 and 5 to socket ``receiver_index % n``, the others by the kernel's hash.

    Not for a gateway whose obfuscation is on: the program reads the cleartext header.
    """
    program = udp_steering_program(n)
    insns = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(insns))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, bytes(fprog))
    except OSError as exc:
        raise SteeringError(f"SO_ATTACH_REUSEPORT_CBPF failed: {exc.strerror}") from exc


def detach_udp_steering(sock: socket.socket) -> None:
    """Back to the kernel's hash for the whole group (kernel 5.8 and later); no program is fine."""
    with contextlib.suppress(FileNotFoundError):  # ENOENT: no program attached
        sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, 0)

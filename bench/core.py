"""Benchmark of the sans-IO core: full handshakes per second, and µs per packet for seal/open.

Not a test: it prints figures. Run with ``make bench`` or ``.venv/bin/python bench/core.py``.
Medians over several rounds; the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import statistics
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import mlkem
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from veilgate import fastpath
from veilgate.credentials import CredentialVerifier, IssuerKey, issue
from veilgate.fastpath.keypair import CompiledKeypair
from veilgate.protocol.client import ClientProtocol
from veilgate.protocol.control import TunnelConfig
from veilgate.protocol.cookie import CookieGenerator
from veilgate.protocol.crypto import KeyPair
from veilgate.protocol.events import SessionEstablished
from veilgate.protocol.gateway import GatewayProtocol
from veilgate.protocol.handshake import FinalPayload, InitiatorHandshake
from veilgate.protocol.keypair import Keypair, KeypairFactory
from veilgate.protocol.messages import HandshakeResp

SIZE = 1420

KEYPAIR: KeypairFactory = CompiledKeypair if fastpath.wanted(os.environ) else Keypair
"""The keypairs the cores make, as a daemon's would: the compiled path's unless ``VEILGATE_FASTPATH=0``."""


class Addr(tuple[str, int]):
    def cookie_bytes(self) -> bytes:
        return ipaddress.ip_address(self[0]).packed + self[1].to_bytes(2, "big")


def ip_packet(src: str, size: int) -> bytes:
    header = bytearray(20)
    header[0] = 0x45
    header[2:4] = size.to_bytes(2, "big")
    header[12:16] = ipaddress.IPv4Address(src).packed
    header[16:20] = bytes([198, 51, 100, 1])
    return bytes(header) + bytes(size - 20)


def median_of(rounds: int, fn: Callable[[], float]) -> float:
    fn()  # warm-up
    return statistics.median(fn() for _ in range(rounds))


def handshakes_per_second(n: int) -> float:
    """Both sides' work for n full handshakes: init, response, final, credential check, confirmation."""
    return handshake_rates(n)[0]


def gateway_handshakes_per_second(n: int) -> float:
    """The gateway's share alone: what bounds how many clients one gateway core can admit."""
    return handshake_rates(n)[1]


def handshake_rates(n: int) -> tuple[float, float]:
    issuer = IssuerKey.generate()
    gateway_key = KeyPair.generate()
    verifier = CredentialVerifier([issuer.public_key()])
    gateway = GatewayProtocol(gateway_key, verifier, new_keypair=KEYPAIR)
    clients = []
    now = time.time()
    for i in range(n):
        key = KeyPair.generate()
        clients.append(
            (key, issue(issuer, key.public, now).encode(), Addr((f"10.0.{i // 250}.{i % 250 + 1}", 1)))
        )
    cookies = CookieGenerator(gateway_key.public)
    clock = time.perf_counter
    gateway_time = 0.0
    t0 = clock()
    for i, (key, cred, addr) in enumerate(clients):
        hs = InitiatorHandshake(key, gateway_key.public, i + 1, cookies, now)
        g0 = clock()
        gateway.receive_datagram(hs.init_message, addr, now)
        resp = gateway.datagrams_to_send()[0][0]
        gateway_time += clock() - g0
        hs.read_response(HandshakeResp.decode(resp))
        final, _ = hs.write_final(FinalPayload(cred))
        g0 = clock()
        gateway.receive_datagram(final, addr, now)
        gateway.datagrams_to_send()
        gateway_time += clock() - g0
    elapsed = clock() - t0
    assert len(gateway.sessions) == n
    return n / elapsed, n / gateway_time


def connected_pair() -> tuple[ClientProtocol, GatewayProtocol, Addr, float]:
    issuer = IssuerKey.generate()
    gateway_key, client_key = KeyPair.generate(), KeyPair.generate()
    now = time.time()
    gateway = GatewayProtocol(gateway_key, CredentialVerifier([issuer.public_key()]), new_keypair=KEYPAIR)
    credential = issue(issuer, client_key.public, now).encode()
    client = ClientProtocol(client_key, gateway_key.public, credential, new_keypair=KEYPAIR)
    addr = Addr(("192.0.2.1", 5000))
    client.connect(now)
    for _ in range(3):
        for d in client.datagrams_to_send():
            gateway.receive_datagram(d, addr, now)
        while (e := gateway.next_event()) is not None:
            if isinstance(e, SessionEstablished):
                gateway.assign(e.session_id, TunnelConfig(ipv4=ipaddress.IPv4Interface("10.201.0.2/16")), now)
        for d, _ in gateway.datagrams_to_send():
            client.receive_datagram(d, now)
    assert client.connected
    return client, gateway, addr, now


def per_packet(n: int, rounds: int) -> dict[str, float]:
    out: dict[str, float] = {}
    packet = ip_packet("10.201.0.2", SIZE)
    aead = ChaCha20Poly1305(bytes(32))
    nonce = bytes(12)
    sealed = aead.encrypt(nonce, packet, None)

    def bare_encrypt() -> float:
        enc = aead.encrypt
        t = time.perf_counter()
        for _ in range(n):
            enc(nonce, packet, None)
        return (time.perf_counter() - t) / n * 1e6

    def bare_decrypt() -> float:
        dec = aead.decrypt
        t = time.perf_counter()
        for _ in range(n):
            dec(nonce, sealed, None)
        return (time.perf_counter() - t) / n * 1e6

    out["aead_encrypt_us"] = median_of(rounds, bare_encrypt)
    out["aead_decrypt_us"] = median_of(rounds, bare_decrypt)

    def keypair_seal() -> float:
        kp = Keypair(bytes(32), bytes(32), 1, 2, 0.0, True)
        seal = kp.seal
        t = time.perf_counter()
        for _ in range(n):
            seal(packet)
        return (time.perf_counter() - t) / n * 1e6

    def keypair_open() -> float:
        tx = Keypair(bytes(32), bytes(32), 1, 2, 0.0, True)
        rx = Keypair(bytes(32), bytes(32), 2, 1, 0.0, False)
        wire = [tx.seal(packet) for _ in range(n)]
        counters = list(range(n))
        op = rx.open
        t = time.perf_counter()
        for d, c in zip(wire, counters, strict=True):
            op(d, c)
        return (time.perf_counter() - t) / n * 1e6

    out["seal_us"] = median_of(rounds, keypair_seal)
    out["open_us"] = median_of(rounds, keypair_open)

    client, gateway, addr, now = connected_pair()

    def client_send() -> float:
        send = client.send_packet
        t = time.perf_counter()
        for _ in range(n):
            send(packet, now)
        return (time.perf_counter() - t) / n * 1e6

    def gateway_receive() -> float:
        wire = [d for d in (client.send_packet(packet, now) for _ in range(n)) if d is not None]
        recv = gateway.receive_datagram
        t = time.perf_counter()
        for d in wire:
            recv(d, addr, now)
        return (time.perf_counter() - t) / len(wire) * 1e6

    out["client_send_packet_us"] = median_of(rounds, client_send)
    out["gateway_receive_datagram_us"] = median_of(rounds, gateway_receive)
    return out


def primitive_floor_us() -> dict[str, float]:
    """What the public-key operations of one full handshake cost on this machine, both sides together."""

    def us(fn: Callable[[], object], n: int = 300) -> float:
        fn()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t) / n * 1e6

    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate().public_key()
    kem = mlkem.MLKEM768PrivateKey.generate()
    kem_pub = kem.public_key()
    _, ct = kem_pub.encapsulate()
    signer = Ed25519PrivateKey.generate()
    sig = signer.sign(b"m" * 90)
    verifier = signer.public_key()
    costs = {
        "x25519_keygen": us(X25519PrivateKey.generate),
        "x25519_dh": us(lambda: a.exchange(b)),
        "mlkem_keygen": us(mlkem.MLKEM768PrivateKey.generate),
        "mlkem_encaps": us(kem_pub.encapsulate),
        "mlkem_decaps": us(lambda: kem.decapsulate(ct)),
        "ed25519_verify": us(lambda: verifier.verify(sig, b"m" * 90)),
    }
    costs["handshake_total"] = (
        2 * costs["x25519_keygen"]
        + 6 * costs["x25519_dh"]
        + costs["mlkem_keygen"]
        + costs["mlkem_encaps"]
        + costs["mlkem_decaps"]
        + costs["ed25519_verify"]
    )
    return costs


def after_idle_us(gap: float = 0.02, n: int = 60) -> dict[str, float]:
    """One step timed right after sleeping ``gap`` seconds, as a packet after an idle spell meets
    it, against the same step back to back. The ratio is what an idle gap costs on this machine:
    code and data the sleep let fall out of the caches (and TLB) must be fetched again."""

    def timed(fn: Callable[[], object], sleep: float) -> float:
        fn()
        samples = []
        for _ in range(n):
            if sleep:
                time.sleep(sleep)
            t = time.perf_counter_ns()
            fn()
            samples.append(time.perf_counter_ns() - t)
        return statistics.median(samples) / 1e3

    aead = ChaCha20Poly1305(bytes(32))
    nonce, payload = bytes(12), bytes(96)
    sealed = aead.encrypt(nonce, payload, None)
    tx = Keypair(bytes(32), bytes(32), 1, 2, 0.0, True)
    steps: dict[str, Callable[[], object]] = {
        "python_step": lambda: sum(range(50)),
        "aead_decrypt_96B": lambda: aead.decrypt(nonce, sealed, None),
        "seal_96B": lambda: tx.seal(payload),
    }
    out = {}
    for name, fn in steps.items():
        out[name + "_warm"] = timed(fn, 0)
        out[name + "_after_idle"] = timed(fn, gap)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--packets", type=int, default=20000)
    ap.add_argument("--handshakes", type=int, default=300)
    ap.add_argument("--idle-samples", type=int, default=60, help="samples per step after a 20 ms sleep")
    args = ap.parse_args(argv)
    rates = [handshake_rates(args.handshakes) for _ in range(args.rounds + 1)][1:]
    both = statistics.median(r[0] for r in rates)
    gw = statistics.median(r[1] for r in rates)
    print(
        f"handshakes_per_second={both:.0f}  (full handshakes, both sides, one core, median of {args.rounds})"
    )
    print(f"gateway_handshakes_per_second={gw:.0f}  (the gateway's share: response, final, credential check)")
    floor = primitive_floor_us()
    print(
        "public-key work per handshake, both sides: "
        + ", ".join(f"{k}={v:.0f}us" for k, v in floor.items() if k != "handshake_total")
    )
    print(
        f"primitive_floor_us={floor['handshake_total']:.0f}  "
        f"(ceiling {1e6 / floor['handshake_total']:.0f} handshakes/s before any protocol code)"
    )
    r = per_packet(args.packets, args.rounds)
    print(f"packet size {SIZE} bytes, {args.packets} packets x {args.rounds} rounds, medians:")
    print(
        f"seal_us={r['seal_us']:.2f} aead_encrypt_us={r['aead_encrypt_us']:.2f} "
        f"overhead_us={r['seal_us'] - r['aead_encrypt_us']:.2f}"
    )
    print(
        f"open_us={r['open_us']:.2f} aead_decrypt_us={r['aead_decrypt_us']:.2f} "
        f"overhead_us={r['open_us'] - r['aead_decrypt_us']:.2f}"
    )
    print(
        f"client_send_packet_us={r['client_send_packet_us']:.2f} "
        f"overhead_us={r['client_send_packet_us'] - r['aead_encrypt_us']:.2f}"
    )
    print(
        f"gateway_receive_datagram_us={r['gateway_receive_datagram_us']:.2f} "
        f"overhead_us={r['gateway_receive_datagram_us'] - r['aead_decrypt_us']:.2f}"
    )
    cold = after_idle_us(n=args.idle_samples)
    print("one step back to back, then right after a 20 ms sleep (what a packet after an idle gap meets):")
    for name in ("python_step", "aead_decrypt_96B", "seal_96B"):
        print(
            f"{name}_warm_us={cold[name + '_warm']:.2f} {name}_after_idle_us={cold[name + '_after_idle']:.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

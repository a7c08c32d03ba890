/* A minimal TUN <-> UDP relay in C with ChaCha20-Poly1305 from OpenSSL's EVP interface: what the
 * same work costs without an interpreter (bench/latency.py; built there when a C compiler and the
 * OpenSSL headers are present, skipped otherwise). A timing floor, not a tunnel: fixed key and
 * nonce, no protocol. usage: relay TUN_NAME LOCAL_IP PEER_IP PORT */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

static unsigned char key[32], nonce[12];
static EVP_CIPHER_CTX *enc, *dec;

static int seal(const unsigned char *in, int n, unsigned char *out) {
    int len, fin;
    EVP_EncryptInit_ex(enc, NULL, NULL, key, nonce);
    EVP_EncryptUpdate(enc, out, &len, in, n);
    EVP_EncryptFinal_ex(enc, out + len, &fin);
    EVP_CIPHER_CTX_ctrl(enc, EVP_CTRL_AEAD_GET_TAG, 16, out + n);
    return n + 16;
}

static int open_(unsigned char *in, int n, unsigned char *out) {
    int len, fin;
    if (n < 16) return -1;
    EVP_DecryptInit_ex(dec, NULL, NULL, key, nonce);
    EVP_DecryptUpdate(dec, out, &len, in, n - 16);
    EVP_CIPHER_CTX_ctrl(dec, EVP_CTRL_AEAD_SET_TAG, 16, in + n - 16);
    return EVP_DecryptFinal_ex(dec, out + len, &fin) > 0 ? n - 16 : -1;
}

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: relay TUN LOCAL PEER PORT\n"); return 2; }
    int tun = open("/dev/net/tun", O_RDWR | O_NONBLOCK);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    strncpy(ifr.ifr_name, argv[1], IFNAMSIZ - 1);
    if (tun < 0 || ioctl(tun, TUNSETIFF, &ifr) < 0) { perror("tun"); return 1; }
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[4]))};
    inet_pton(AF_INET, argv[2], &a.sin_addr);
    if (bind(sock, (void *)&a, sizeof a) < 0) { perror("bind"); return 1; }
    inet_pton(AF_INET, argv[3], &a.sin_addr);
    if (connect(sock, (void *)&a, sizeof a) < 0) { perror("connect"); return 1; }
    enc = EVP_CIPHER_CTX_new();
    dec = EVP_CIPHER_CTX_new();
    EVP_EncryptInit_ex(enc, EVP_chacha20_poly1305(), NULL, key, nonce);
    EVP_DecryptInit_ex(dec, EVP_chacha20_poly1305(), NULL, key, nonce);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN};
    ev.data.fd = tun;
    epoll_ctl(ep, EPOLL_CTL_ADD, tun, &ev);
    ev.data.fd = sock;
    epoll_ctl(ep, EPOLL_CTL_ADD, sock, &ev);
    static unsigned char buf[70000], out[70016];
    struct epoll_event events[2];
    for (;;) {
        int n = epoll_wait(ep, events, 2, -1);
        for (int i = 0; i < n; i++) {
            if (events[i].data.fd == tun) {
                for (;;) {
                    int r = read(tun, buf, sizeof buf);
                    if (r <= 0) break;
                    send(sock, out, seal(buf, r, out), 0);
                }
            } else {
                for (;;) {
                    int r = recv(sock, buf, sizeof buf, 0);
                    if (r < 0 && errno == EAGAIN) break;
                    if (r < 0) continue;
                    int m = open_(buf, r, out);
                    if (m > 0 && write(tun, out, m) < 0) continue;
                }
            }
        }
    }
}

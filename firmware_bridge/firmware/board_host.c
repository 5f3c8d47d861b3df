/* Board glue for a POSIX host: the firmware as a process on a pty or serial port, for tests and
 * bench work. The e-stop input is SIGUSR1 (press) and SIGUSR2 (release); the enable output is a
 * line on stderr ("enable 1 at 1234 ms") at every change. Usage:
 *
 *     edgevla-mcu-host --fd N            (an inherited pty master or serial fd)
 *     edgevla-mcu-host --tty /dev/ttyUSB0
 *     [--board N]                        (board id reported in HELLO_REPLY; 0: this host build)
 */
#define _DEFAULT_SOURCE /* cfmakeraw */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "evb_core.h"

static volatile sig_atomic_t estop_input = 0;
static volatile sig_atomic_t running = 1;
static unsigned long tx_dropped = 0;

static void on_signal(int sig) {
    if (sig == SIGUSR1) estop_input = 1;
    else if (sig == SIGUSR2) estop_input = 0;
    else running = 0;
}

static uint32_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint32_t)((uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u);
}

static void tx(void *ctx, const uint8_t *frame, size_t n) {
    int fd = *(int *)ctx;
    /* Non-blocking: with nobody on the other end a pty's buffer fills; a safety MCU drops its
     * reports rather than stop its loop. */
    ssize_t w = write(fd, frame, n);
    if (w != (ssize_t)n) tx_dropped++;
}

static int open_tty(const char *path) {
    int fd = open(path, O_RDWR | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) return -1;
    struct termios t;
    if (tcgetattr(fd, &t) == 0) {
        cfmakeraw(&t);
        cfsetispeed(&t, B115200);
        cfsetospeed(&t, B115200);
        tcsetattr(fd, TCSANOW, &t);
    }
    return fd;
}

int main(int argc, char **argv) {
    int fd = -1;
    uint8_t board = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--fd") && i + 1 < argc) {
            fd = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--tty") && i + 1 < argc) {
            fd = open_tty(argv[++i]);
            if (fd < 0) {
                fprintf(stderr, "cannot open %s: %s\n", argv[i], strerror(errno));
                return 2;
            }
        } else if (!strcmp(argv[i], "--board") && i + 1 < argc) {
            board = (uint8_t)atoi(argv[++i]);
        } else {
            fprintf(stderr, "usage: %s (--fd N | --tty PATH) [--board N]\n", argv[0]);
            return 2;
        }
    }
    if (fd < 0) {
        fprintf(stderr, "usage: %s (--fd N | --tty PATH) [--board N]\n", argv[0]);
        return 2;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGUSR2, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    evb_core core;
    evb_core_init(&core, now_ms(), board, tx, &fd);
    int enable = -1;
    fprintf(stderr, "ready firmware %d.%d.%d protocol %u\n", EVB_FW_MAJOR, EVB_FW_MINOR,
            EVB_FW_PATCH, EVB_VERSION);
    while (running) {
        struct pollfd p = {fd, POLLIN, 0};
        int r = poll(&p, 1, 1);
        uint32_t t = now_ms();
        if (r > 0 && (p.revents & POLLIN)) {
            uint8_t buf[256];
            ssize_t n = read(fd, buf, sizeof buf);
            for (ssize_t i = 0; i < n; i++) evb_core_on_byte(&core, buf[i], t);
        } else if (r > 0) {
            /* POLLHUP: nobody has the other end open; keep the loop (and the deadline) going. */
            struct timespec nap = {0, 1000000};
            nanosleep(&nap, NULL);
        }
        int e = evb_core_tick(&core, now_ms(), estop_input);
        if (e != enable) {
            enable = e;
            fprintf(stderr, "enable %d at %lu ms\n", e, (unsigned long)(now_ms() - core.boot_ms));
        }
    }
    fprintf(stderr, "stopped: %u frames ok, %u bad, %lu sends dropped\n", core.parser.frames_ok,
            core.parser.frames_bad, tx_dropped);
    return 0;
}

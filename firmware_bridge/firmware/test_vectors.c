/* Checks this build against the shared test vectors (../vectors/protocol-v1.txt):
 *   accept NAME TYPE SEQ PAYLOAD_HEX FRAME_HEX   the frame decodes to exactly this packet, and
 *                                                this packet encodes to exactly this frame
 *   reject NAME FRAME_HEX                        the parser takes no packet from these bytes
 * Prints one line per failure and a summary; exit status 1 if anything failed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "evb_protocol.h"

static size_t unhex(const char *s, uint8_t *out, size_t cap) {
    size_t n = 0;
    if (!strcmp(s, "-")) return 0;
    while (s[0] && s[1] && n < cap) {
        unsigned v;
        if (sscanf(s, "%2x", &v) != 1) break;
        out[n++] = (uint8_t)v;
        s += 2;
    }
    return n;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s VECTORS\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(argv[1], "r");
    if (!f) {
        perror(argv[1]);
        return 2;
    }
    char line[4096];
    int checked = 0, failed = 0;
    while (fgets(line, sizeof line, f)) {
        char kind[16], name[128], a[1024], b[1024], c[1024];
        unsigned type, seq;
        if (line[0] == '#' || line[0] == '\n') continue;
        uint8_t bytes[512], payload[EVB_MAX_PAYLOAD + 8];
        evb_parser ps;
        evb_packet got;
        evb_parser_init(&ps);
        if (sscanf(line, "%15s %127s", kind, name) != 2) continue;
        if (!strcmp(kind, "accept") &&
            sscanf(line, "%*s %*s %x %u %1023s %1023s", &type, &seq, a, b) == 4) {
            size_t np = unhex(a, payload, sizeof payload), nf = unhex(b, bytes, sizeof bytes);
            int count = 0, same = 0;
            for (size_t i = 0; i < nf; i++) {
                if (evb_parser_feed(&ps, bytes[i], &got)) {
                    count++;
                    same = got.type == type && got.seq == seq && got.len == np &&
                           !memcmp(got.payload, payload, np);
                }
            }
            evb_packet p = {(uint8_t)type, (uint16_t)seq, (uint8_t)np, {0}};
            memcpy(p.payload, payload, np);
            uint8_t frame[EVB_MAX_FRAME];
            size_t n = evb_frame_encode(&p, frame);
            int encoded = n == nf && !memcmp(frame, bytes, n);
            if (count != 1 || !same || !encoded) {
                printf("FAIL %s: decoded %d packet(s)%s, encoding %s\n", name, count,
                       same ? "" : " (different)", encoded ? "matches" : "differs");
                failed++;
            }
            checked++;
        } else if (!strcmp(kind, "reject") && sscanf(line, "%*s %*s %1023s", c) == 1) {
            size_t nf = unhex(c, bytes, sizeof bytes);
            int count = 0;
            for (size_t i = 0; i < nf; i++) count += evb_parser_feed(&ps, bytes[i], &got);
            if (count) {
                printf("FAIL %s: accepted %d packet(s)\n", name, count);
                failed++;
            }
            checked++;
        }
    }
    fclose(f);
    printf("%d vectors, %d failed\n", checked, failed);
    return failed ? 1 : 0;
}

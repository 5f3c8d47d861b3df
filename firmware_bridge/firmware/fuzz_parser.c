/* Parser harness for fuzzing, built with sanitizers by the tests. Reads records from stdin, each
 * a little-endian u32 length and that many bytes, feeds each to a fresh parser and prints the
 * packets it accepts ("TYPE SEQ PAYLOAD_HEX", two-digit hex type, "-" for no payload) followed by
 * a line "end". The Python side checks the same bytes with its own parser. */
#include <stdio.h>
#include <stdlib.h>

#include "evb_protocol.h"

int main(void) {
    unsigned char hdr[4];
    static uint8_t buf[1 << 20];
    while (fread(hdr, 1, 4, stdin) == 4) {
        uint32_t n = evb_get_u32(hdr);
        if (n > sizeof buf || fread(buf, 1, n, stdin) != n) return 2;
        evb_parser ps;
        evb_packet p;
        evb_parser_init(&ps);
        for (uint32_t i = 0; i < n; i++) {
            if (evb_parser_feed(&ps, buf[i], &p)) {
                printf("%02x %u ", p.type, p.seq);
                if (!p.len) printf("-");
                for (unsigned k = 0; k < p.len; k++) printf("%02x", p.payload[k]);
                printf("\n");
            }
        }
        printf("end\n");
        fflush(stdout);
    }
    return 0;
}

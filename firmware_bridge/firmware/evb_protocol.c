/* Framing, CRC and packet codec of protocol version 1 (docs/protocol.md). */
#include "evb_protocol.h"

#include <string.h>

uint16_t evb_crc16(const uint8_t *data, size_t n, uint16_t crc) {
    for (size_t i = 0; i < n; i++) {
        crc ^= data[i];
        for (int b = 0; b < 8; b++) {
            crc = (crc & 1u) ? (uint16_t)((crc >> 1) ^ 0x8408u) : (uint16_t)(crc >> 1);
        }
    }
    return crc;
}

/* type, payload length, CRC seed: the seed makes two builds that disagree on a message's layout
 * reject each other's frames instead of misreading them (MAVLink's CRC_EXTRA). */
static const uint8_t MESSAGES[][3] = {
    {EVB_HELLO, 4, 0x4E},           {EVB_HELLO_REPLY, 8, 0x8B}, {EVB_HEARTBEAT, 5, 0x33},
    {EVB_ESTOP_STATE, 2, 0xC7},     {EVB_ENABLE, 1, 0x61},      {EVB_ESTOP_RESET, 0, 0x9D},
    {EVB_GRIPPER_COMMAND, 4, 0x17}, {EVB_GRIPPER_STATE, 5, 0xE2}, {EVB_FAULT, 3, 0x58},
    {EVB_ACK, 3, 0xA4},             {EVB_NACK, 4, 0x2F},
};

int evb_message_info(uint8_t type, uint8_t *len, uint8_t *seed) {
    for (size_t i = 0; i < sizeof MESSAGES / sizeof MESSAGES[0]; i++) {
        if (MESSAGES[i][0] == type) {
            *len = MESSAGES[i][1];
            *seed = MESSAGES[i][2];
            return 1;
        }
    }
    return 0;
}

size_t evb_cobs_encode(const uint8_t *in, size_t n, uint8_t *out) {
    size_t code_at = 0, o = 1;
    uint8_t code = 1;
    for (size_t i = 0; i < n; i++) {
        if (in[i] == 0) {
            out[code_at] = code;
            code_at = o++;
            code = 1;
        } else {
            out[o++] = in[i];
            if (++code == 0xFF) {
                out[code_at] = code;
                code_at = o++;
                code = 1;
            }
        }
    }
    out[code_at] = code;
    return o;
}

int evb_cobs_decode(const uint8_t *in, size_t n, uint8_t *out, size_t cap) {
    size_t i = 0, o = 0;
    while (i < n) {
        uint8_t code = in[i++];
        if (code == 0) return EVB_ERR_COBS;
        for (uint8_t k = 1; k < code; k++) {
            if (i >= n || in[i] == 0 || o >= cap) return EVB_ERR_COBS;
            out[o++] = in[i++];
        }
        if (code != 0xFF && i < n) {
            if (o >= cap) return EVB_ERR_COBS;
            out[o++] = 0;
        }
    }
    return (int)o;
}

size_t evb_frame_encode(const evb_packet *p, uint8_t *out) {
    uint8_t len, seed;
    if (!evb_message_info(p->type, &len, &seed) || p->len != len) return 0;
    uint8_t raw[EVB_MAX_PACKET];
    raw[0] = EVB_VERSION;
    raw[1] = p->type;
    evb_put_u16(raw + 2, p->seq);
    raw[4] = len;
    memcpy(raw + EVB_HEADER, p->payload, len);
    uint16_t crc = evb_crc16(raw, EVB_HEADER + len, 0xFFFFu);
    crc = evb_crc16(&seed, 1, crc);
    evb_put_u16(raw + EVB_HEADER + len, crc);
    size_t n = evb_cobs_encode(raw, EVB_HEADER + len + 2u, out);
    out[n++] = 0;
    return n;
}

int evb_packet_decode(const uint8_t *raw, size_t n, evb_packet *p) {
    uint8_t len, seed;
    if (n < EVB_HEADER + 2u) return EVB_ERR_SHORT;
    if (raw[0] != EVB_VERSION) return EVB_ERR_VERSION;
    if (!evb_message_info(raw[1], &len, &seed)) return EVB_ERR_TYPE;
    if (raw[4] != len || n != EVB_HEADER + len + 2u) return EVB_ERR_LENGTH;
    uint16_t crc = evb_crc16(raw, EVB_HEADER + len, 0xFFFFu);
    crc = evb_crc16(&seed, 1, crc);
    if (crc != evb_get_u16(raw + EVB_HEADER + len)) return EVB_ERR_CRC;
    p->type = raw[1];
    p->seq = evb_get_u16(raw + 2);
    p->len = len;
    memcpy(p->payload, raw + EVB_HEADER, len);
    return 0;
}

void evb_parser_init(evb_parser *ps) { memset(ps, 0, sizeof *ps); }

int evb_parser_feed(evb_parser *ps, uint8_t byte, evb_packet *p) {
    if (byte != 0) {
        if (ps->n < sizeof ps->buf) {
            ps->buf[ps->n++] = byte;
        } else {
            ps->overflow = 1; /* too long to be ours: drop everything up to the next 0x00 */
        }
        return 0;
    }
    int ok = 0;
    if (ps->n > 0) {
        uint8_t raw[EVB_MAX_PACKET];
        int m = ps->overflow ? EVB_ERR_COBS : evb_cobs_decode(ps->buf, ps->n, raw, sizeof raw);
        if (m >= 0 && evb_packet_decode(raw, (size_t)m, p) == 0) {
            ps->frames_ok++;
            ok = 1;
        } else {
            ps->frames_bad++;
        }
    }
    ps->n = 0;
    ps->overflow = 0;
    return ok;
}

void evb_put_u16(uint8_t *at, uint16_t v) {
    at[0] = (uint8_t)(v & 0xFFu);
    at[1] = (uint8_t)(v >> 8);
}

void evb_put_u32(uint8_t *at, uint32_t v) {
    for (int i = 0; i < 4; i++) at[i] = (uint8_t)(v >> (8 * i));
}

uint16_t evb_get_u16(const uint8_t *at) { return (uint16_t)(at[0] | (at[1] << 8)); }

uint32_t evb_get_u32(const uint8_t *at) {
    return (uint32_t)at[0] | ((uint32_t)at[1] << 8) | ((uint32_t)at[2] << 16) |
           ((uint32_t)at[3] << 24);
}

/* edgevla safety-MCU link, protocol version 1: framing, CRC and messages (docs/protocol.md).
 *
 * Portable C99, no allocation, no I/O: the board glue feeds received bytes to an evb_parser and
 * writes the frames evb_frame_encode produces. Shared with the host by the test vectors in
 * ../vectors/protocol-v1.txt.
 */
#ifndef EVB_PROTOCOL_H
#define EVB_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>

#define EVB_VERSION 1u
#define EVB_HEADER 5u       /* version, type, seq (2), length */
#define EVB_MAX_PAYLOAD 32u
#define EVB_MAX_PACKET (EVB_HEADER + EVB_MAX_PAYLOAD + 2u)
/* COBS adds one byte per 254 started; the frame adds the 0x00 delimiter. */
#define EVB_MAX_FRAME_BODY (EVB_MAX_PACKET + 1u + EVB_MAX_PACKET / 254u)
#define EVB_MAX_FRAME (EVB_MAX_FRAME_BODY + 1u)

enum evb_type {
    EVB_HELLO = 0x01,
    EVB_HELLO_REPLY = 0x02,
    EVB_HEARTBEAT = 0x10,
    EVB_ESTOP_STATE = 0x11,
    EVB_ENABLE = 0x20,
    EVB_ESTOP_RESET = 0x21,
    EVB_GRIPPER_COMMAND = 0x30,
    EVB_GRIPPER_STATE = 0x31,
    EVB_FAULT = 0x40,
    EVB_ACK = 0x7E,
    EVB_NACK = 0x7F
};

/* MCU heartbeat status bits. */
#define EVB_ST_ENABLE_OUT 0x01u
#define EVB_ST_ESTOP_PRESSED 0x02u
#define EVB_ST_ESTOP_LATCHED 0x04u
#define EVB_ST_HOST_TIMEOUT 0x08u
#define EVB_ST_ENABLE_REQUESTED 0x10u
#define EVB_ST_FAULT 0x20u
#define EVB_ST_HELLO_DONE 0x40u

/* NACK reasons. */
enum evb_nack {
    EVB_NACK_VERSION = 1,
    EVB_NACK_NO_HELLO = 2,
    EVB_NACK_ESTOP_PRESSED = 3,
    EVB_NACK_ESTOP_LATCHED = 4,
    EVB_NACK_FAULT = 5,
    EVB_NACK_BAD_VALUE = 6,
    EVB_NACK_UNSUPPORTED = 7
};

/* Decode errors (negative). */
enum evb_error {
    EVB_ERR_COBS = -1,
    EVB_ERR_SHORT = -2,
    EVB_ERR_VERSION = -3,
    EVB_ERR_TYPE = -4,
    EVB_ERR_LENGTH = -5,
    EVB_ERR_CRC = -6
};

typedef struct {
    uint8_t type;
    uint16_t seq;
    uint8_t len;
    uint8_t payload[EVB_MAX_PAYLOAD];
} evb_packet;

/* CRC-16/MCRF4XX (poly 0x1021 reflected, init 0xFFFF, no final xor); check("123456789") 0x6F91. */
uint16_t evb_crc16(const uint8_t *data, size_t n, uint16_t crc);

/* Payload length and CRC seed of a message type; returns 0 for an unknown type. */
int evb_message_info(uint8_t type, uint8_t *len, uint8_t *seed);

size_t evb_cobs_encode(const uint8_t *in, size_t n, uint8_t *out);
/* Decodes one frame without its delimiter; returns the length or EVB_ERR_COBS. */
int evb_cobs_decode(const uint8_t *in, size_t n, uint8_t *out, size_t cap);

/* A whole frame (COBS and the 0x00 delimiter) into out (EVB_MAX_FRAME bytes); returns its size,
 * 0 if the packet's type is unknown or its length is not that type's. */
size_t evb_frame_encode(const evb_packet *p, uint8_t *out);
/* One decoded (un-COBSed) packet; returns 0 or an evb_error. */
int evb_packet_decode(const uint8_t *raw, size_t n, evb_packet *p);

/* Byte-at-a-time receiver: resynchronises on every 0x00, so garbage costs at most one frame. */
typedef struct {
    uint8_t buf[EVB_MAX_FRAME_BODY];
    size_t n;
    int overflow;
    uint32_t frames_ok;
    uint32_t frames_bad;
} evb_parser;

void evb_parser_init(evb_parser *ps);
/* Returns 1 and fills *p when `byte` completes a valid packet, else 0. */
int evb_parser_feed(evb_parser *ps, uint8_t byte, evb_packet *p);

/* Little-endian field helpers. */
void evb_put_u16(uint8_t *at, uint16_t v);
void evb_put_u32(uint8_t *at, uint32_t v);
uint16_t evb_get_u16(const uint8_t *at);
uint32_t evb_get_u32(const uint8_t *at);

#endif

/* The safety MCU's state machine (docs/protocol.md, "The MCU"). */
#include "evb_core.h"

#include <string.h>

static void send(evb_core *c, uint8_t type, const uint8_t *payload, uint8_t len) {
    evb_packet p;
    uint8_t frame[EVB_MAX_FRAME];
    p.type = type;
    p.seq = c->tx_seq++;
    p.len = len;
    if (len) memcpy(p.payload, payload, len);
    size_t n = evb_frame_encode(&p, frame);
    if (n) c->tx(c->tx_ctx, frame, n);
}

static void ack(evb_core *c, const evb_packet *p) {
    uint8_t b[3] = {p->type, 0, 0};
    evb_put_u16(b + 1, p->seq);
    send(c, EVB_ACK, b, 3);
}

static void nack(evb_core *c, const evb_packet *p, uint8_t reason) {
    uint8_t b[4] = {p->type, 0, 0, reason};
    evb_put_u16(b + 1, p->seq);
    send(c, EVB_NACK, b, 4);
}

static void send_estop(evb_core *c) {
    uint8_t b[2] = {(uint8_t)c->estop_pressed, (uint8_t)c->estop_latched};
    send(c, EVB_ESTOP_STATE, b, 2);
}

uint8_t evb_core_status(const evb_core *c) {
    uint8_t s = 0;
    if (c->enable_out) s |= EVB_ST_ENABLE_OUT;
    if (c->estop_pressed) s |= EVB_ST_ESTOP_PRESSED;
    if (c->estop_latched) s |= EVB_ST_ESTOP_LATCHED;
    if (c->host_timed_out) s |= EVB_ST_HOST_TIMEOUT;
    if (c->enable_requested) s |= EVB_ST_ENABLE_REQUESTED;
    if (c->fault) s |= EVB_ST_FAULT;
    if (c->hello_done) s |= EVB_ST_HELLO_DONE;
    return s;
}

void evb_core_init(evb_core *c, uint32_t now_ms, uint8_t board, evb_tx_fn tx, void *ctx) {
    memset(c, 0, sizeof *c);
    c->board = board;
    c->host_timeout_ms = EVB_DEFAULT_HOST_TIMEOUT_MS;
    c->boot_ms = now_ms;
    c->next_heartbeat_ms = now_ms;
    c->next_gripper_ms = now_ms;
    c->next_estop_ms = now_ms;
    c->last_gripper_ms = now_ms;
    c->gripper_target = 1000;
    c->gripper_pos_um = 1000000u;
    c->gripper_speed = 1000;
    c->tx = tx;
    c->tx_ctx = ctx;
    evb_parser_init(&c->parser);
}

static void on_packet(evb_core *c, const evb_packet *p, uint32_t now_ms) {
    /* Any valid frame is a sign of a live host. */
    c->last_host_ms = now_ms;
    c->host_seen = 1;
    switch (p->type) {
    case EVB_HELLO: {
        uint8_t lo = p->payload[0], hi = p->payload[1];
        uint16_t timeout = evb_get_u16(p->payload + 2);
        if (lo > EVB_VERSION || hi < EVB_VERSION) {
            nack(c, p, EVB_NACK_VERSION);
            return;
        }
        if (timeout != 0) {
            if (timeout < EVB_MIN_HOST_TIMEOUT_MS || timeout > EVB_MAX_HOST_TIMEOUT_MS) {
                nack(c, p, EVB_NACK_BAD_VALUE);
                return;
            }
            c->host_timeout_ms = timeout;
        }
        c->hello_done = 1;
        uint8_t b[8] = {EVB_VERSION, EVB_FW_MAJOR, EVB_FW_MINOR, EVB_FW_PATCH, c->board, 0, 0,
                        EVB_HEARTBEAT_PERIOD_MS};
        evb_put_u16(b + 5, c->host_timeout_ms);
        send(c, EVB_HELLO_REPLY, b, 8);
        send_estop(c);
        return;
    }
    case EVB_HEARTBEAT:
        return;
    case EVB_ENABLE:
        if (!c->hello_done) {
            nack(c, p, EVB_NACK_NO_HELLO);
        } else if (p->payload[0] == 0) {
            c->enable_requested = 0;
            ack(c, p);
        } else if (c->estop_pressed) {
            nack(c, p, EVB_NACK_ESTOP_PRESSED);
        } else if (c->estop_latched) {
            nack(c, p, EVB_NACK_ESTOP_LATCHED);
        } else if (c->fault) {
            nack(c, p, EVB_NACK_FAULT);
        } else {
            c->enable_requested = 1;
            c->host_timed_out = 0;
            ack(c, p);
        }
        return;
    case EVB_ESTOP_RESET:
        if (!c->hello_done) {
            nack(c, p, EVB_NACK_NO_HELLO);
        } else if (c->estop_pressed) {
            nack(c, p, EVB_NACK_ESTOP_PRESSED);
        } else {
            c->estop_latched = 0;
            ack(c, p);
            send_estop(c);
        }
        return;
    case EVB_GRIPPER_COMMAND: {
        uint16_t pos = evb_get_u16(p->payload), speed = evb_get_u16(p->payload + 2);
        if (!c->hello_done) {
            nack(c, p, EVB_NACK_NO_HELLO);
        } else if (pos > 1000 || speed == 0 || speed > 10000) {
            nack(c, p, EVB_NACK_BAD_VALUE);
        } else {
            c->gripper_target = pos;
            c->gripper_speed = speed;
            ack(c, p);
        }
        return;
    }
    default: /* valid, but not a message the MCU takes (its own kinds, ACK/NACK) */
        nack(c, p, EVB_NACK_UNSUPPORTED);
        return;
    }
}

void evb_core_on_byte(evb_core *c, uint8_t byte, uint32_t now_ms) {
    evb_packet p;
    if (evb_parser_feed(&c->parser, byte, &p)) on_packet(c, &p, now_ms);
}

static void move_gripper(evb_core *c, uint32_t now_ms) {
    uint32_t dt = now_ms - c->last_gripper_ms;
    c->last_gripper_ms = now_ms;
    uint32_t target = (uint32_t)c->gripper_target * 1000u;
    uint32_t step = dt * c->gripper_speed; /* per mille x 1000 per ms */
    if (c->gripper_pos_um < target) {
        c->gripper_pos_um = (target - c->gripper_pos_um <= step) ? target : c->gripper_pos_um + step;
    } else if (c->gripper_pos_um > target) {
        c->gripper_pos_um = (c->gripper_pos_um - target <= step) ? target : c->gripper_pos_um - step;
    }
}

/* Unsigned wrap-safe "a is at or after b". */
static int reached(uint32_t a, uint32_t b) { return (int32_t)(a - b) >= 0; }

int evb_core_tick(evb_core *c, uint32_t now_ms, int estop_input) {
    if (estop_input && !c->estop_pressed) {
        c->estop_pressed = 1;
        c->estop_latched = 1;
        c->enable_requested = 0; /* re-enabling needs a reset and a new request */
        send_estop(c);
    } else if (!estop_input && c->estop_pressed) {
        c->estop_pressed = 0; /* still latched until the host resets it */
        send_estop(c);
    }
    int host_alive = c->host_seen && (now_ms - c->last_host_ms) <= c->host_timeout_ms;
    if (c->enable_requested && !host_alive) {
        c->enable_requested = 0; /* the host went silent: enable stays off until asked again */
        c->host_timed_out = 1;
    }
    c->enable_out = c->enable_requested && host_alive && !c->estop_pressed &&
                    !c->estop_latched && !c->fault;
    move_gripper(c, now_ms);
    if (reached(now_ms, c->next_heartbeat_ms)) {
        uint8_t b[5];
        b[0] = evb_core_status(c);
        evb_put_u32(b + 1, now_ms - c->boot_ms);
        send(c, EVB_HEARTBEAT, b, 5);
        c->next_heartbeat_ms = now_ms + EVB_HEARTBEAT_PERIOD_MS;
    }
    if (reached(now_ms, c->next_gripper_ms)) {
        uint8_t b[5];
        evb_put_u16(b, (uint16_t)((c->gripper_pos_um + 500u) / 1000u));
        evb_put_u16(b + 2, c->gripper_target);
        b[4] = (uint8_t)(c->gripper_pos_um != (uint32_t)c->gripper_target * 1000u);
        send(c, EVB_GRIPPER_STATE, b, 5);
        c->next_gripper_ms = now_ms + EVB_GRIPPER_PERIOD_MS;
    }
    if (reached(now_ms, c->next_estop_ms)) {
        send_estop(c);
        c->next_estop_ms = now_ms + EVB_ESTOP_PERIOD_MS;
    }
    return c->enable_out;
}

void evb_core_fault(evb_core *c, uint8_t code, uint16_t detail, uint32_t now_ms) {
    (void)now_ms;
    c->fault = code ? code : 1;
    c->enable_requested = 0;
    uint8_t b[3] = {c->fault, 0, 0};
    evb_put_u16(b + 1, detail);
    send(c, EVB_FAULT, b, 3);
}

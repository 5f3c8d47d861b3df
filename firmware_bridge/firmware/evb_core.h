/* The safety MCU's behaviour, independent of any board (docs/protocol.md, "The MCU").
 *
 * The board glue calls evb_core_on_byte for every received byte and evb_core_tick at least once
 * a millisecond with the e-stop input, and drives the enable output from tick's return value.
 * Frames to send go out through the tx callback. Time is the board's millisecond counter.
 */
#ifndef EVB_CORE_H
#define EVB_CORE_H

#include "evb_protocol.h"

#define EVB_FW_MAJOR 1
#define EVB_FW_MINOR 0
#define EVB_FW_PATCH 0
#define EVB_DEFAULT_HOST_TIMEOUT_MS 100u
#define EVB_MIN_HOST_TIMEOUT_MS 20u
#define EVB_MAX_HOST_TIMEOUT_MS 1000u
#define EVB_HEARTBEAT_PERIOD_MS 10u
#define EVB_GRIPPER_PERIOD_MS 50u
#define EVB_ESTOP_PERIOD_MS 100u

typedef void (*evb_tx_fn)(void *ctx, const uint8_t *frame, size_t n);

typedef struct {
    uint8_t board;
    uint16_t host_timeout_ms;
    uint32_t boot_ms;
    uint32_t last_host_ms;
    int host_seen;
    int hello_done;
    int enable_requested;
    int host_timed_out;
    int estop_pressed;
    int estop_latched;
    uint8_t fault;
    int enable_out;
    uint16_t tx_seq;
    uint16_t gripper_target;   /* per mille open */
    uint16_t gripper_speed;    /* per mille per second */
    uint32_t gripper_pos_um;   /* per mille x 1000, for sub-step motion */
    uint32_t last_gripper_ms;
    uint32_t next_heartbeat_ms;
    uint32_t next_gripper_ms;
    uint32_t next_estop_ms;
    evb_parser parser;
    evb_tx_fn tx;
    void *tx_ctx;
} evb_core;

void evb_core_init(evb_core *c, uint32_t now_ms, uint8_t board, evb_tx_fn tx, void *ctx);
void evb_core_on_byte(evb_core *c, uint8_t byte, uint32_t now_ms);
/* Advance to now with the e-stop input (1: pressed); returns the enable output (1: high). */
int evb_core_tick(evb_core *c, uint32_t now_ms, int estop_input);
/* A fault the board detected (0 clears nothing: faults latch until power cycle). */
void evb_core_fault(evb_core *c, uint8_t code, uint16_t detail, uint32_t now_ms);
uint8_t evb_core_status(const evb_core *c);

#endif

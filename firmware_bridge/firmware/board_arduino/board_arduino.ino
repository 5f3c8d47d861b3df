// edgevla safety MCU on an Arduino-class board (Uno / Nano, ATmega328P, or any Arduino core).
//
// Wiring (firmware/README.md):
//   ESTOP_PIN   the e-stop's normally-closed contact to GND, INPUT_PULLUP: open (pressed, or a
//               cut wire) reads HIGH, which counts as pressed
//   ENABLE_PIN  to the robot's safety input through the relay/optocoupler stage; HIGH enables
//
// Copy ../evb_protocol.[ch] and ../evb_core.[ch] next to this sketch (the Arduino IDE builds the
// files of the sketch folder), then build and flash. Not built by CI: the host build of the same
// core (board_host.c) is what the conformance tests run.
extern "C" {
#include "evb_core.h"
}

static const uint8_t ESTOP_PIN = 2;
static const uint8_t ENABLE_PIN = 7;
static const uint8_t BOARD_ID = 1;  // reported in HELLO_REPLY: 1 = Arduino ATmega328P

static evb_core core;

static void tx(void *, const uint8_t *frame, size_t n) {
  // Never block the safety loop: drop a report the UART cannot take now.
  if ((size_t)Serial.availableForWrite() >= n) Serial.write(frame, n);
}

void setup() {
  pinMode(ENABLE_PIN, OUTPUT);
  digitalWrite(ENABLE_PIN, LOW);  // low from reset until the host asks
  pinMode(ESTOP_PIN, INPUT_PULLUP);
  Serial.begin(115200);
  evb_core_init(&core, millis(), BOARD_ID, tx, nullptr);
}

void loop() {
  uint32_t now = millis();
  while (Serial.available() > 0) evb_core_on_byte(&core, (uint8_t)Serial.read(), now);
  int pressed = digitalRead(ESTOP_PIN) == HIGH;
  digitalWrite(ENABLE_PIN, evb_core_tick(&core, millis(), pressed) ? HIGH : LOW);
}

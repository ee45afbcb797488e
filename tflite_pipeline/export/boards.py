"""Microcontroller budgets: board presets (memory from their datasheets, less what the firmware keeps) or
explicit limits, and the check of a model's flash and tensor arena against them. No heavy imports: the CLI
lists the boards in its help."""

from __future__ import annotations

from dataclasses import dataclass

from tflite_pipeline.errors import RecipeError


@dataclass(frozen=True)
class Board:
    """A board's memory from its datasheet, and what its firmware keeps (the TFLM runtime and kernels, the board
    core, the sketch, stack and heap): an assumption stated in `docs/micro.md`, not a measurement."""

    title: str
    chip: str
    flash_kb: int
    ram_kb: int                 # the largest contiguous RAM block: the arena is one array
    firmware_flash_kb: int
    firmware_ram_kb: int


BOARDS: dict[str, Board] = {
    "nano33ble": Board("Arduino Nano 33 BLE Sense", "nRF52840, Cortex-M4F 64 MHz", 1024, 256, 192, 64),
    "esp32s3": Board("ESP32-S3-WROOM-1-N8", "ESP32-S3, Xtensa LX7 240 MHz; 8 MB flash, 512 KB internal SRAM "
                     "(PSRAM not used)", 8192, 512, 1024, 192),
    "stm32h743": Board("STM32H743 (NUCLEO-H743ZI2)", "Cortex-M7 480 MHz; 1 MB SRAM in all, 512 KB AXI SRAM the "
                       "largest block", 2048, 512, 128, 32),
}


@dataclass(frozen=True)
class MicroBudget:
    """What the model may take: flash for the flatbuffer, RAM for the tensor arena (None: no limit)."""

    name: str
    flash_bytes: int | None
    ram_bytes: int | None
    note: str = ""

    def problems(self, flash: int, arena: int) -> list[str]:
        out = []
        if self.flash_bytes is not None and flash > self.flash_bytes:
            out.append(f"the model is {flash / 1024:,.1f} KB, over the {self.flash_bytes / 1024:,.0f} KB of flash "
                       "it may take: lower model.alpha (width) or prune channels ([channels] budget); resolution "
                       "does not change it")
        if self.ram_bytes is not None and arena > self.ram_bytes:
            out.append(f"the tensor arena needs {arena / 1024:,.1f} KB (with margin), over the "
                       f"{self.ram_bytes / 1024:,.0f} KB of RAM it may take: lower model.input_size (activations "
                       "grow with height x width), model.alpha, or prune channels")
        return out


def micro_budget(board: str | None = None, flash_kb: float | None = None, ram_kb: float | None = None
                 ) -> MicroBudget | None:
    """A board preset (`BOARDS`: its memory minus the firmware's share) or explicit KB for the model (these
    override the board's); None when neither is given. Raises `RecipeError` for an unknown board or a size <= 0."""
    for name, value in (("flash_kb", flash_kb), ("ram_kb", ram_kb)):
        if value is not None and not value > 0:
            raise RecipeError(f"Received {name}={value}; expected a size in KB above 0.")
    if board is None:
        if flash_kb is None and ram_kb is None:
            return None
        return MicroBudget("custom", _kb(flash_kb), _kb(ram_kb), "explicit limits for the model")
    if board not in BOARDS:
        raise RecipeError(f"Received board={board!r}; expected one of {sorted(BOARDS)} (or flash_kb/ram_kb).")
    b = BOARDS[board]
    return MicroBudget(board, _kb(flash_kb if flash_kb is not None else b.flash_kb - b.firmware_flash_kb),
                       _kb(ram_kb if ram_kb is not None else b.ram_kb - b.firmware_ram_kb),
                       f"{b.title} ({b.chip}): {b.flash_kb} KB flash, {b.ram_kb} KB RAM, less {b.firmware_flash_kb} KB "
                       f"/ {b.firmware_ram_kb} KB kept for the firmware")


def _kb(value: float | None) -> int | None:
    return None if value is None else int(value * 1024)

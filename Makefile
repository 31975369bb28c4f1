# Thin wrapper: what the README tells people to type. The build itself is CMake + Ninja.
BUILD ?= build
CTEST_ARGS ?=

.PHONY: all deps configure build guest host-qemu linux-guest run test unit integration clean format

all: build

deps:
	@scripts/install-deps.sh

configure: deps
	@cmake -S . -B $(BUILD) -G Ninja >/dev/null

# Everything the tests use: the guest (blimp.elf, blimp.iso), the host tests and hangar, the
# patched QEMU (host/qemu, built once and reused: a few minutes the first time) and the anchor
# Linux guest (image/linux, Debian's kernel + busybox, fetched with apt-get download).
build: guest host-qemu linux-guest

guest: configure
	@cmake --build $(BUILD)

host-qemu: deps
	@host/qemu/build.sh $(BUILD)

linux-guest: deps
	@image/linux/build.sh $(BUILD)

# The demo: a fleet of blimp VMs under hangar, with a memory budget below their sum
# (bench/hangar/demo.json); a single VM: image/run.sh --app hello.
run: guest
	$(BUILD)/host/hangar/hangar run --config bench/hangar/demo.json

# Everything: host unit tests (ASan/UBSan) and integration tests that boot real VMs.
test: build
	ctest --test-dir $(BUILD) --output-on-failure $(CTEST_ARGS)

unit: build
	ctest --test-dir $(BUILD) --output-on-failure -L unit $(CTEST_ARGS)

integration: build
	ctest --test-dir $(BUILD) --output-on-failure -L integration $(CTEST_ARGS)

format:
	@git ls-files "*.c" "*.cpp" "*.h" | xargs clang-format -i

clean:
	rm -rf $(BUILD)

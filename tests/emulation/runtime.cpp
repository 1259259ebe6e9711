// The warp emulator's runtime: blocks run one after another; inside a block every CUDA thread is a
// fiber (its own stack; a dozen-instruction switch, no system call) that runs until it reaches a synchronisation point (a warp collective or
// __syncthreads), where it waits until every lane the collective names has arrived. Compiled without
// instrumentation: it also implements the memory-access hooks that -fsanitize=thread makes the
// kernel file call, and checks there that shared memory is read only after its writer synced with
// the reader, and that every access the compiler emits as aligned is aligned.
#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "shim/warp_emulator.h"

#if defined(__SANITIZE_ADDRESS__)
extern "C" {
void __sanitizer_start_switch_fiber(void** fake_stack_save, const void* bottom, size_t size);
void __sanitizer_finish_switch_fiber(void* fake_stack_save, const void** bottom_old, size_t* size_old);
void __asan_unpoison_memory_region(void const volatile* addr, size_t size);
}
#endif
// libubsan (both builds link it): where UBSAN_OPTIONS=log_path=… sends reports, "<path>.<pid>" once one was made
extern "C" const char* __sanitizer_get_report_path();

// Saves the callee-saved registers and the floating-point control words on the current stack,
// stores the stack pointer in *save, and resumes the context whose stack pointer is `next` (x86-64
// System V). A new fiber's stack is laid out as if it had called this, returning into its entry.
extern "C" void sifa_emu_switch(void** save, void* next);
asm(R"(
  .text
  .globl sifa_emu_switch
  .type sifa_emu_switch, @function
sifa_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size sifa_emu_switch, .-sifa_emu_switch
)");

namespace sifa_emu {
namespace {

constexpr int kWarp = 32;
constexpr std::size_t kDefaultSharedLimit = 48 * 1024;
constexpr std::size_t kOptInSharedLimit = 227 * 1024;
#if defined(__SANITIZE_ADDRESS__)
constexpr std::size_t kStackBytes = 1 << 20;
#else
constexpr std::size_t kStackBytes = 256 << 10;
#endif

enum class State { kRunnable, kWaiting, kExited };

const char* collective_name(Collective op) {
  switch (op) {
    case Collective::kSyncWarp: return "__syncwarp";
    case Collective::kShflIdx: return "__shfl_sync";
    case Collective::kShflXor: return "__shfl_xor_sync";
    case Collective::kShflUp: return "__shfl_up_sync";
    case Collective::kShflDown: return "__shfl_down_sync";
    case Collective::kBallot: return "__ballot_sync";
    case Collective::kSyncThreads: return "__syncthreads";
  }
  return "?";
}

struct Site {
  const char* file;
  int line;
  bool operator<(const Site& o) const { return line != o.line ? line < o.line : std::strcmp(file, o.file) < 0; }
  bool operator==(const Site& o) const { return line == o.line && std::strcmp(file, o.file) == 0; }
};

struct Thread {
  void* sp = nullptr;  // saved stack pointer while switched out
  char* stack = nullptr;
  void* fake_stack = nullptr;
  ThreadContext builtins;
  int id = 0;
  State state = State::kRunnable;
  // the collective it waits at
  Collective op = Collective::kSyncWarp;
  unsigned mask = 0;
  uint64_t bits = 0, result = 0;
  int arg = 0, width = kWarp;
  Site site{"", 0};
  std::map<Site, int64_t> arrivals;  // times it completed each collective site
  // happens-before within the warp: a vector clock over its 32 lanes (own entry starts at 1)
  uint32_t clock[kWarp];
  uint32_t barriers = 0;  // __syncthreads completed
};

// Who last wrote each byte of shared memory, and when (a FastTrack-style epoch).
struct ShadowByte {
  int32_t writer;  // thread id, −1: never written in this block
  uint32_t clock;  // the writer's own clock entry at the write
  uint32_t barriers;
};

struct Runtime {
  // settings and counters
  Schedule schedule = Schedule::kInOrder;
  uint64_t seed = 0;
  int64_t max_blocks = 0;
  int64_t only_last_blocks = 0;
  std::size_t opt_in_limit = kOptInSharedLimit;  // what the emulated device reports
  Statistics stats{0, 0, 0, 0};
  std::unordered_map<const void*, std::size_t> opt_in_shared;
  cudaError_t last_error = cudaSuccess;
  std::string message;

  // the block being run
  std::vector<Thread> threads;
  std::vector<unsigned char> shared;  // kOptInSharedLimit + 16 bytes: accesses past the launch's size are caught
  unsigned char* shared_base = nullptr;
  std::size_t shared_bytes = 0;
  std::vector<ShadowByte> shadow;
  const std::function<void()>* body = nullptr;
  std::string error;  // the block's first failure
  void* scheduler_sp = nullptr;
  void* scheduler_fake_stack = nullptr;
  const void* scheduler_stack_bottom = nullptr;
  std::size_t scheduler_stack_size = 0;
  long report_offset = 0;
};

Runtime& rt() {
  static Runtime r;
  return r;
}
thread_local Thread* current = nullptr;

void fail(const std::string& what) {
  auto& r = rt();
  if (r.error.empty()) r.error = what;
}

std::string where(const Thread& t) {
  std::ostringstream s;
  s << "block " << t.builtins.block_idx.x << " thread " << t.id << " (warp " << t.id / kWarp << " lane "
    << t.id % kWarp << ")";
  return s.str();
}

std::string site_text(const Thread& t) {
  std::ostringstream s;
  s << collective_name(t.op) << " at " << t.site.file << ":" << t.site.line;
  return s.str();
}

// --- fibers --------------------------------------------------------------------------------------

void switch_to_scheduler(bool exiting) {
  Thread* self = current;
  (void)exiting;
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_start_switch_fiber(exiting ? nullptr : &self->fake_stack, rt().scheduler_stack_bottom,
                                 rt().scheduler_stack_size);
#endif
  sifa_emu_switch(&self->sp, rt().scheduler_sp);
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(self->fake_stack, nullptr, nullptr);
#endif
}

void fiber_main() {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(nullptr, &rt().scheduler_stack_bottom, &rt().scheduler_stack_size);
#endif
  try {
    (*rt().body)();
  } catch (const std::exception& e) {
    fail(where(*current) + ": the kernel threw: " + e.what());
  }
  current->state = State::kExited;
  switch_to_scheduler(true);
}

void resume(Thread& t) {
  current = &t;
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_start_switch_fiber(&rt().scheduler_fake_stack, t.stack, kStackBytes);
#endif
  sifa_emu_switch(&rt().scheduler_sp, t.sp);
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(rt().scheduler_fake_stack, nullptr, nullptr);  // back on the scheduler's stack
#endif
  current = nullptr;
}

char* new_stack() {
  void* p = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    std::fprintf(stderr, "warp emulator: cannot map a fiber stack\n");
    std::abort();
  }
  return static_cast<char*>(p);
}

// A fresh stack that sifa_emu_switch "returns" into fiber_main on: control words, six registers,
// the return address, with the alignment a called function expects.
void* initial_stack(char* stack) {
#if defined(__SANITIZE_ADDRESS__)
  __asan_unpoison_memory_region(stack, kStackBytes);  // frames of the previous block's fibers, never returned from
#endif
  auto top = reinterpret_cast<uintptr_t>(stack + kStackBytes) & ~uintptr_t(15);
  auto* slot = reinterpret_cast<uint64_t*>(top) - 2;  // [return address][unused]: 16-byte aligned
  slot[0] = reinterpret_cast<uint64_t>(&fiber_main);
  slot[1] = 0;
  uint64_t* frame = slot - 7;  // control words, r15, r14, r13, r12, rbx, rbp
  uint32_t control[2];
  asm volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(control[0]), "=m"(control[1]));
  std::memcpy(frame, control, sizeof control);
  for (int i = 1; i < 7; ++i) frame[i] = 0;
  return frame;
}

// --- collectives ---------------------------------------------------------------------------------

// The lane a shuffle reads from, or −1 for "its own value" (CUDA's rule for sources beyond the segment).
int shuffle_source(Collective op, int lane, int arg, int width) {
  const int segment = lane & ~(width - 1);
  switch (op) {
    case Collective::kShflIdx: return segment + (arg & (width - 1));
    case Collective::kShflXor: {
      const int src = lane ^ arg;
      return src >= segment + width ? -1 : src;
    }
    case Collective::kShflUp: return (lane - segment) < arg ? -1 : lane - arg;
    case Collective::kShflDown: return (lane - segment) + arg >= width ? -1 : lane + arg;
    default: return -1;
  }
}

// Completes the collective that lanes `members` (of one warp) wait at, or reports why it cannot.
bool complete_warp_collective(int warp_first, int warp_size, unsigned mask) {
  auto& r = rt();
  std::vector<Thread*> members;
  Thread& first = r.threads[warp_first + __builtin_ctz(mask)];
  for (int lane = 0; lane < kWarp; ++lane) {
    if (!(mask >> lane & 1u)) continue;
    if (lane >= warp_size) {
      fail(where(first) + ": " + site_text(first) + " names lane " + std::to_string(lane) +
           ", beyond the block's last thread");
      return false;
    }
    Thread& t = r.threads[warp_first + lane];
    if (t.state == State::kExited) {
      fail("warp divergence: " + where(t) + " exited, while " + where(first) + " waits for it at " +
           site_text(first));
      return false;
    }
    if (t.state != State::kWaiting) return false;  // still running (cannot happen between rounds)
    if (t.op != first.op || !(t.site == first.site) || t.mask != first.mask) {
      fail("warp divergence: " + where(first) + " waits at " + site_text(first) + " (mask " +
           std::to_string(first.mask) + ") while " + where(t) + " waits at " + site_text(t) + " (mask " +
           std::to_string(t.mask) + ")");
      return false;
    }
    if (t.arrivals[t.site] != first.arrivals[first.site]) {
      fail("warp divergence: " + where(t) + " reaches " + site_text(t) + " for time " +
           std::to_string(t.arrivals[t.site] + 1) + ", " + where(first) + " for time " +
           std::to_string(first.arrivals[first.site] + 1));
      return false;
    }
    members.push_back(&t);
  }
  // results
  uint64_t ballot = 0;
  for (Thread* t : members) ballot |= uint64_t(t->bits != 0) << (t->id % kWarp);
  for (Thread* t : members) {
    const int lane = t->id % kWarp;
    if (t->op == Collective::kBallot) {
      t->result = ballot;
    } else if (t->op == Collective::kSyncWarp) {
      t->result = 0;
    } else {
      if (t->width <= 0 || t->width > kWarp || (t->width & (t->width - 1))) {
        fail(where(*t) + ": " + site_text(*t) + " with width " + std::to_string(t->width));
        return false;
      }
      const int src = shuffle_source(t->op, lane, t->arg, t->width);
      if (src < 0) {
        t->result = t->bits;
      } else if (!(mask >> src & 1u)) {
        fail(where(*t) + ": " + site_text(*t) + " reads lane " + std::to_string(src) +
             ", which the mask leaves out (its value is undefined)");
        return false;
      } else {
        t->result = r.threads[warp_first + src].bits;
      }
    }
  }
  // happens-before: every member now knows what every member did before the collective
  uint32_t joined[kWarp] = {};
  for (Thread* t : members)
    for (int l = 0; l < kWarp; ++l) joined[l] = std::max(joined[l], t->clock[l]);
  for (Thread* t : members) {
    std::copy(joined, joined + kWarp, t->clock);
    ++t->clock[t->id % kWarp];
    ++t->arrivals[t->site];
    t->state = State::kRunnable;
  }
  ++r.stats.collectives;
  return true;
}

bool complete_barrier() {
  auto& r = rt();
  const Thread* first = nullptr;
  for (const Thread& t : r.threads) {
    if (t.state == State::kExited) continue;
    if (t.state != State::kWaiting || t.op != Collective::kSyncThreads) return false;
    if (first && !(t.site == first->site)) {
      fail("divergence: " + where(*first) + " waits at " + site_text(*first) + ", " + where(t) + " at " +
           site_text(t));
      return false;
    }
    first = first ? first : &t;
  }
  if (!first) return false;
  for (Thread& t : r.threads) {
    if (t.state == State::kExited) continue;
    ++t.barriers;
    ++t.clock[t.id % kWarp];
    t.state = State::kRunnable;
  }
  ++r.stats.collectives;
  return true;
}

// After a round in which every thread ran until it waited or exited: release what can complete.
bool complete_collectives() {
  auto& r = rt();
  bool progressed = false;
  const int n = static_cast<int>(r.threads.size());
  for (int warp_first = 0; warp_first < n; warp_first += kWarp) {
    const int warp_size = std::min(kWarp, n - warp_first);
    for (int lane = 0; lane < warp_size; ++lane) {
      Thread& t = r.threads[warp_first + lane];
      if (t.state != State::kWaiting || t.op == Collective::kSyncThreads) continue;
      if (!(t.mask >> lane & 1u)) {
        fail(where(t) + ": " + site_text(t) + " with a mask that leaves out the calling lane");
        return false;
      }
      if (complete_warp_collective(warp_first, warp_size, t.mask)) progressed = true;
      if (!r.error.empty()) return false;
    }
  }
  if (!progressed) progressed = complete_barrier();
  return progressed;
}

std::string describe_waiters() {
  std::ostringstream s;
  for (const Thread& t : rt().threads)
    if (t.state == State::kWaiting) {
      s << "\n  " << where(t) << " waits at " << site_text(t);
    }
  return s.str();
}

void run_block(dim3 block_idx, const LaunchConfig& cfg, dim3 grid) {
  auto& r = rt();
  const int n = static_cast<int>(cfg.block.x * cfg.block.y * cfg.block.z);
  if (r.threads.size() < std::size_t(n)) r.threads.resize(n);
  r.threads.resize(n);
  std::fill(r.shared.begin(), r.shared.end(), 0xff);  // NaN in every float type: unwritten reads show
  std::fill(r.shadow.begin(), r.shadow.end(), ShadowByte{-1, 0, 0});
  for (int i = 0; i < n; ++i) {
    Thread& t = r.threads[i];
    if (!t.stack) t.stack = new_stack();
    t.id = i;
    t.state = State::kRunnable;
    t.builtins = {dim3(i % cfg.block.x, (i / cfg.block.x) % cfg.block.y, i / (cfg.block.x * cfg.block.y)),
                  block_idx, cfg.block, grid};
    t.arrivals.clear();
    std::fill(t.clock, t.clock + kWarp, 0u);
    t.clock[i % kWarp] = 1;
    t.barriers = 0;
    t.sp = initial_stack(t.stack);
  }
  std::vector<int> order(n);
  for (int i = 0; i < n; ++i) order[i] = r.schedule == Schedule::kReversed ? n - 1 - i : i;
  std::mt19937_64 rng(r.seed * 1000003u + block_idx.x);
  while (true) {
    if (r.schedule == Schedule::kShuffled) std::shuffle(order.begin(), order.end(), rng);
    for (int i : order) {
      if (r.threads[i].state == State::kRunnable) resume(r.threads[i]);
      if (!r.error.empty()) return;
    }
    if (std::all_of(r.threads.begin(), r.threads.end(), [](const Thread& t) { return t.state == State::kExited; }))
      return;
    if (!complete_collectives()) {
      if (r.error.empty()) fail("deadlock: no synchronisation point can complete" + describe_waiters());
      return;
    }
  }
}

// --- shared memory checks (called from the instrumented kernel file) -----------------------------

void check_alignment(const void* addr, int size) {
  if (reinterpret_cast<uintptr_t>(addr) % size != 0) {
    std::ostringstream s;
    s << where(*current) << ": misaligned " << size << "-byte access at " << addr
      << " (a GPU faults on it)";
    fail(s.str());
  }
}

void check_shared(const void* addr, int size, bool write) {
  auto& r = rt();
  const auto* p = static_cast<const unsigned char*>(addr);
  if (p < r.shared_base || p >= r.shared_base + kOptInSharedLimit + 16) return;
  const std::size_t offset = p - r.shared_base;
  if (offset + size > r.shared_bytes) {
    fail(where(*current) + ": shared memory access at byte " + std::to_string(offset) + " beyond the " +
         std::to_string(r.shared_bytes) + " bytes the launch asked for");
    return;
  }
  Thread& self = *current;
  for (int i = 0; i < size; ++i) {
    ShadowByte& b = r.shadow[offset + i];
    if (b.writer >= 0 && b.writer != self.id) {
      const Thread& w = r.threads[b.writer];
      const bool same_warp = w.id / kWarp == self.id / kWarp;
      const bool ordered = self.barriers > b.barriers || (same_warp && self.clock[w.id % kWarp] >= b.clock);
      if (!ordered) {
        fail("shared memory race: " + where(self) + (write ? " writes" : " reads") + " byte " +
             std::to_string(offset + i) + " that " + where(w) + " wrote with no synchronisation in between");
        return;
      }
    } else if (b.writer < 0 && !write) {
      fail(where(self) + " reads shared memory byte " + std::to_string(offset + i) + " that nobody wrote");
      return;
    }
    if (write) b = {self.id, self.clock[self.id % kWarp], self.barriers};
  }
}

void report_sanitizer_output() {
  auto& r = rt();
  const char* file = __sanitizer_get_report_path();
  if (!file || !*file || !std::strchr(file, '/')) return;  // nothing reported yet, or to stderr
  FILE* f = std::fopen(file, "r");
  if (!f) return;
  std::fseek(f, r.report_offset, SEEK_SET);
  std::string text;
  char buf[4096];
  std::size_t got;
  while ((got = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, got);
  std::fclose(f);
  r.report_offset += static_cast<long>(text.size());
  if (!text.empty()) fail("sanitizer report:\n" + text);
}

}  // namespace

const ThreadContext& context() {
  if (!current) {
    std::fprintf(stderr, "warp emulator: a CUDA built-in read outside a kernel\n");
    std::abort();
  }
  return current->builtins;
}

uint64_t collective(Collective op, unsigned mask, uint64_t bits, int arg, int width, const char* file, int line) {
  Thread* self = current;
  self->op = op;
  self->mask = mask;
  self->bits = bits;
  self->arg = arg;
  self->width = width;
  self->site = {file, line};
  self->state = State::kWaiting;
  switch_to_scheduler(false);
  return self->result;
}

void* dynamic_shared(std::size_t alignment) {
  const auto address = reinterpret_cast<uintptr_t>(rt().shared_base);
  if (address % alignment != 0) fail("dynamic shared memory misaligned for the declared alignment");
  return rt().shared_base;
}

void count_atomic() { ++rt().stats.atomics; }

void configure(Schedule schedule, uint64_t seed, int64_t max_blocks, int64_t only_last_blocks,
               int64_t shared_limit) {
  auto& r = rt();
  r.opt_in_limit = shared_limit > 0 ? std::min<std::size_t>(shared_limit, kOptInSharedLimit) : kOptInSharedLimit;
  r.schedule = schedule;
  r.seed = seed;
  r.max_blocks = max_blocks;
  r.only_last_blocks = only_last_blocks;
  r.stats = {0, 0, 0, 0};
}

Statistics statistics() { return rt().stats; }

int opt_in_shared_limit() { return static_cast<int>(rt().opt_in_limit); }

cudaError_t set_max_dynamic_shared(const void* kernel, int bytes) {
  if (bytes < 0 || std::size_t(bytes) > rt().opt_in_limit) return cudaErrorInvalidValue;
  rt().opt_in_shared[kernel] = bytes;
  return cudaSuccess;
}

cudaError_t take_last_error() {
  auto& r = rt();
  const cudaError_t e = r.last_error;
  r.last_error = cudaSuccess;
  return e;
}

const char* error_message(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    default: return rt().message.c_str();
  }
}

void run_launch(const void* kernel, const LaunchConfig& cfg, const std::function<void()>& body) {
  auto& r = rt();
  if (r.last_error != cudaSuccess) return;  // a sticky error from an earlier launch, as on a device
  const int64_t threads = int64_t(cfg.block.x) * cfg.block.y * cfg.block.z;
  if (threads <= 0 || threads > 1024 || cfg.grid.x == 0 || cfg.grid.y == 0 || cfg.grid.z == 0 ||
      cfg.grid.y > 65535 || cfg.grid.z > 65535 || cfg.grid.x > 0x7fffffffu) {
    r.last_error = cudaErrorInvalidConfiguration;
    return;
  }
  const auto opt_in = r.opt_in_shared.find(kernel);
  const std::size_t limit = std::min(std::max(kDefaultSharedLimit, opt_in == r.opt_in_shared.end() ? 0 : opt_in->second),
                                     std::max(kDefaultSharedLimit, r.opt_in_limit));
  if (cfg.shared_bytes > limit) {
    r.last_error = cudaErrorInvalidValue;  // what a GPU answers to dynamic shared memory beyond the opt-in
    return;
  }
  if (r.shared.empty()) {
    r.shared.resize(kOptInSharedLimit + 16 + 16);
    const auto a = reinterpret_cast<uintptr_t>(r.shared.data());
    r.shared_base = r.shared.data() + (16 - a % 16) % 16;
    r.shadow.resize(kOptInSharedLimit + 16);
  }
  r.shared_bytes = cfg.shared_bytes;
  r.body = &body;
  r.error.clear();
  ++r.stats.launches;
  dim3 grid = cfg.grid;
  if (r.max_blocks > 0) grid.x = static_cast<unsigned>(std::min<int64_t>(grid.x, r.max_blocks));
  const unsigned first_x = r.only_last_blocks > 0 && r.only_last_blocks < grid.x ? grid.x - r.only_last_blocks : 0;
  for (unsigned z = 0; z < grid.z && r.error.empty(); ++z)
    for (unsigned y = 0; y < grid.y && r.error.empty(); ++y)
      for (unsigned x = first_x; x < grid.x && r.error.empty(); ++x) {
        run_block(dim3(x, y, z), cfg, grid);
        ++r.stats.blocks;
      }
  report_sanitizer_output();
  if (!r.error.empty()) {
    r.message = r.error;
    r.last_error = cudaErrorLaunchFailure;
  }
}

}  // namespace sifa_emu

// --- hooks of -fsanitize=thread's instrumentation ------------------------------------------------
// The kernel file is compiled with it (not linked with its runtime): every load and store it makes
// calls these. Accesses the compiler declares aligned must be aligned; shared memory is checked
// for races. Host code (no current fiber) passes straight through.
#define SIFA_EMU_ACCESS_HOOKS(N)                                                                   \
  extern "C" void __tsan_read##N(void* a) {                                                        \
    if (!sifa_emu::current) return;                                                                \
    sifa_emu::check_alignment(a, N);                                                               \
    sifa_emu::check_shared(a, N, false);                                                           \
  }                                                                                                \
  extern "C" void __tsan_write##N(void* a) {                                                       \
    if (!sifa_emu::current) return;                                                                \
    sifa_emu::check_alignment(a, N);                                                               \
    sifa_emu::check_shared(a, N, true);                                                            \
  }                                                                                                \
  extern "C" void __tsan_unaligned_read##N(void* a) {                                              \
    if (sifa_emu::current) sifa_emu::check_shared(a, N, false);                                    \
  }                                                                                                \
  extern "C" void __tsan_unaligned_write##N(void* a) {                                             \
    if (sifa_emu::current) sifa_emu::check_shared(a, N, true);                                     \
  }                                                                                                \
  extern "C" void __tsan_volatile_read##N(void* a) { __tsan_read##N(a); }                          \
  extern "C" void __tsan_volatile_write##N(void* a) { __tsan_write##N(a); }
SIFA_EMU_ACCESS_HOOKS(1)
SIFA_EMU_ACCESS_HOOKS(2)
SIFA_EMU_ACCESS_HOOKS(4)
SIFA_EMU_ACCESS_HOOKS(8)
SIFA_EMU_ACCESS_HOOKS(16)
extern "C" void __tsan_read_range(void* a, unsigned long size) {
  if (sifa_emu::current) sifa_emu::check_shared(a, static_cast<int>(size), false);
}
extern "C" void __tsan_write_range(void* a, unsigned long size) {
  if (sifa_emu::current) sifa_emu::check_shared(a, static_cast<int>(size), true);
}
extern "C" void __tsan_func_entry(void*) {}
extern "C" void __tsan_func_exit() {}
extern "C" void __tsan_init() {}
extern "C" void __tsan_vptr_update(void**, void*) {}
extern "C" void __tsan_vptr_read(void**) {}
// Atomics of host code inlined into the kernel file (reference counts): done for real.
#define SIFA_EMU_ATOMIC_HOOKS(BITS, T)                                                                         \
  extern "C" T __tsan_atomic##BITS##_load(const volatile T* a, int) { return __atomic_load_n(a, __ATOMIC_SEQ_CST); } \
  extern "C" void __tsan_atomic##BITS##_store(volatile T* a, T v, int) { __atomic_store_n(a, v, __ATOMIC_SEQ_CST); } \
  extern "C" T __tsan_atomic##BITS##_exchange(volatile T* a, T v, int) {                                       \
    return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                                        \
  }                                                                                                            \
  extern "C" T __tsan_atomic##BITS##_fetch_add(volatile T* a, T v, int) {                                      \
    return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);                                                         \
  }                                                                                                            \
  extern "C" T __tsan_atomic##BITS##_fetch_sub(volatile T* a, T v, int) {                                      \
    return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST);                                                         \
  }                                                                                                            \
  extern "C" T __tsan_atomic##BITS##_fetch_and(volatile T* a, T v, int) {                                      \
    return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST);                                                         \
  }                                                                                                            \
  extern "C" T __tsan_atomic##BITS##_fetch_or(volatile T* a, T v, int) {                                       \
    return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST);                                                          \
  }                                                                                                            \
  extern "C" T __tsan_atomic##BITS##_fetch_xor(volatile T* a, T v, int) {                                      \
    return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST);                                                         \
  }                                                                                                            \
  extern "C" int __tsan_atomic##BITS##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {           \
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                    \
  }                                                                                                            \
  extern "C" int __tsan_atomic##BITS##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {             \
    return __atomic_compare_exchange_n(a, c, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                     \
  }                                                                                                            \
  extern "C" T __tsan_atomic##BITS##_compare_exchange_val(volatile T* a, T c, T v, int, int) {                 \
    __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                          \
    return c;                                                                                                  \
  }
SIFA_EMU_ATOMIC_HOOKS(8, uint8_t)
SIFA_EMU_ATOMIC_HOOKS(16, uint16_t)
SIFA_EMU_ATOMIC_HOOKS(32, uint32_t)
SIFA_EMU_ATOMIC_HOOKS(64, uint64_t)
extern "C" void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
extern "C" void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

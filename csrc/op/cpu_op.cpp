// proxopt::step on the CPU: the schema's registration and the CPU kernel.
// Checks every tensor of the call (checks.h), then reads the step counters,
// derives the per-step scalars once per distinct step count, and runs every
// chunk of every tensor in one parallel region of torch's thread pool.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <pthread.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <vector>

#include "../cpu/driver.h"
#include "../cpu/isa.h"
#include "../proxopt/coeffs.h"
#include "checks.h"

namespace proxopt::op {
namespace {

using cpu::Chunk;
using cpu::KernelSet;
using cpu::TensorTask;

// A forked child has none of the parent's OpenMP threads, and libgomp hangs
// when it is asked for a parallel region there: calls in such a child run on
// its calling thread (same results; the elementwise math does not depend on
// the split).
std::atomic<bool> g_forked{false};
const int g_atfork = pthread_atfork(nullptr, nullptr, [] { g_forked.store(true); });

void write_step(void* steps, bool f64, int64_t j, double v) {
  if (f64) {
    static_cast<double*>(steps)[j] = v;
  } else {
    static_cast<float*>(steps)[j] = float(v);
  }
}

// Runs every chunk: contiguous runs of chunks of about equal cost, one per
// thread of torch's pool (at::parallel_for: OpenMP in torch's CPU builds).
// Measured against the project's own pool (a condition-variable pool with
// an atomic chunk counter), AdamW on one 16M tensor with 2 threads: torch's
// pool 1.18x torch's fused step, our own 0.85-0.92x -- torch's OpenMP
// threads keep spinning after torch's own ops and took cores from ours.
int64_t pool_threads() { return g_forked.load() ? 1 : int64_t(torch::stable::get_num_threads()); }

void run_chunks(const std::vector<Chunk>& chunks, const std::vector<TensorTask>& tasks, int64_t total,
                std::vector<BudgetCounts>& counts) {
  if (chunks.empty()) return;
  const int64_t threads = total < cpu::kParallelMinElems ? 1 : pool_threads();
  auto run = [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const Chunk& ch = chunks[size_t(c)];
      ch.fn(tasks[size_t(ch.task)], ch.begin, ch.end, &counts[size_t(c)]);
    }
  };
  if (threads <= 1 || chunks.size() == 1) {
    run(0, int64_t(chunks.size()));
    return;
  }
  // Part boundaries by cumulative cost: part p runs chunks [bound[p], bound[p+1]).
  std::vector<int64_t> bound(size_t(threads) + 1, int64_t(chunks.size()));
  bound[0] = 0;
  int64_t acc = 0, part = 1;
  for (size_t c = 0; c < chunks.size() && part < threads; ++c) {
    acc += chunks[c].cost;
    while (part < threads && acc * threads >= total * part) bound[size_t(part++)] = int64_t(c) + 1;
  }
  torch::stable::parallel_for(0, threads, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) run(bound[size_t(p)], bound[size_t(p) + 1]);
  });
}

// The boxed kernel (the schema in schema.h): arguments unboxed by hand, see abi.h.
void step_cpu(StableIValue* stack, uint64_t num_args, uint64_t /*num_outputs*/) {
  Args args;
  unbox(stack, num_args, args);
  const Call c = checked_call(args, Backend::kCpu);
  if (c.refused) return;
  const bool check_only = args.check_only;
  std::vector<KernelSet> kernels(c.buckets.size());
  for (size_t b = 0; b < c.buckets.size(); ++b) {
    kernels[b] = cpu::select_kernels(c.buckets[b].h, c.buckets[b].dtype->kernel);
    if (kernels[b].plain == nullptr && kernels[b].groups == nullptr) {
      fail("bucket " + std::to_string(b) + ": no kernel for this rule, prox shape and dtype");
    }
  }
  if (check_only || !c.any_stepped) return;
  // AMP: an overflow step leaves every parameter, state and step counter as it was.
  if (c.found_inf != nullptr && *static_cast<const float*>(c.found_inf) != 0.0f) return;
  const double inv_scale = inv_grad_scale(static_cast<const float*>(c.grad_scale));

  // The per-step scalars, once per distinct step count of a bucket (every
  // parameter of a group usually has the same), and the step increments.
  std::vector<Coeffs<double>> table;
  table.reserve(c.items.size());
  std::vector<int32_t> coeff_of(c.items.size(), -1);
  for (size_t b = 0; b < c.buckets.size(); ++b) {
    const Bucket& bk = c.buckets[b];
    const double lr = bk.lr != nullptr ? read_scalar(bk.lr, bk.lr_f64) : bk.h.lr;
    double last_t = -1;  // step counts are >= 1 after the increment
    for (int64_t i = bk.first; i < bk.last; ++i) {
      if (!c.items[size_t(i)].stepped) continue;
      const int64_t j = i - bk.first;
      const void* counter = bk.steps_f64 ? static_cast<const void*>(static_cast<const double*>(bk.steps) + j)
                                         : static_cast<const void*>(static_cast<const float*>(bk.steps) + j);
      const double t = read_scalar(counter, bk.steps_f64) + 1.0;
      write_step(bk.steps, bk.steps_f64, j, t);
      if (t != last_t) {
        table.push_back(make_coeffs(bk.h, t, lr, inv_scale, t == 1.0));
        last_t = t;
      }
      coeff_of[size_t(i)] = int32_t(table.size()) - 1;
    }
  }

  // The sparsity budget: each unit's threshold for this step, from the
  // counts its members gathered at the last one (math.h budget_plan), and
  // the probes this step counts at. O(units) work, no pass over the weights.
  // A channel budget ranks the group norms its tensor wrote at the last
  // step (math.h channel_budget_plan): O(groups log groups).
  std::vector<std::array<double, 4>> probes(c.items.size());
  std::vector<std::vector<size_t>> members(c.items.size());
  for (size_t j = 0; j < c.items.size(); ++j) {
    if (c.items[j].unit >= 0) members[size_t(c.items[j].unit)].push_back(j);
  }
  std::vector<int64_t> order;
  for (size_t i = 0; i < c.items.size(); ++i) {
    if (members[i].empty()) continue;
    const Item& head = c.items[i];
    if (c.buckets[size_t(head.bucket)].h.channel_sparsity != 0) {  // a unit of one tensor: a ranking of its groups
      if (!head.stepped) continue;  // (its slots keep the norms of its last step)
      order.resize(size_t(head.groups));
      channel_budget_plan(head.budget, head.groups,
                          budget_keep(c.buckets[size_t(head.bucket)].h.channel_sparsity, head.groups), order.data());
      head.budget[kBudgetLo] = head.budget[kBudgetMid] = head.budget[kBudgetHi] = 0;
      probes[i] = {head.budget[kBudgetThr], INFINITY, INFINITY, INFINITY};
      continue;
    }
    double lo = 0, mid = 0, hi = 0;
    int64_t n = 0;
    for (size_t j : members[i]) {
      const Item& m = c.items[j];
      lo += m.budget[kBudgetLo];
      mid += m.budget[kBudgetMid];
      hi += m.budget[kBudgetHi];
      n += m.numel;
    }
    const double s = c.buckets[size_t(head.bucket)].h.sparsity;
    budget_plan(head.budget, lo, mid, hi, budget_keep(s, n), n);
    const double center = head.budget[kBudgetCenter], r = head.budget[kBudgetRatio];
    for (size_t j : members[i]) {
      const Item& m = c.items[j];
      std::copy(head.budget, head.budget + kBudgetLo, m.budget);
      // A member without a grad this call keeps its counts (its weights do not move).
      if (m.stepped) m.budget[kBudgetLo] = m.budget[kBudgetMid] = m.budget[kBudgetHi] = 0;
      probes[j] = {head.budget[kBudgetThr], center / r, center, center * r};
    }
  }

  // One flat chunk list over every stepped tensor of every bucket.
  std::vector<TensorTask> tasks;
  std::vector<Chunk> chunks;
  tasks.reserve(c.items.size());
  int64_t total = 0;
  const int64_t threads = pool_threads();  // column panels are split no finer than this
  for (size_t i = 0; i < c.items.size(); ++i) {
    const Item& it = c.items[i];
    if (!it.stepped || it.numel == 0) continue;
    const Bucket& bk = c.buckets[size_t(it.bucket)];
    TensorTask t;
    t.w = it.w;
    t.g = it.g;
    const int64_t esize = bk.dtype->elem_size;
    for (int q = 0; q < bk.nstates; ++q) {
      t.s[q] = static_cast<char*>(bk.states) + (int64_t(q) * bk.cols + it.column) * esize;
    }
    t.numel = it.numel;
    t.coeffs = &table[size_t(coeff_of[i])];
    t.outer = it.outer;
    t.groups = it.groups;
    t.inner = it.inner;
    if (it.budget != nullptr) t.budget = probes[i].data();
    if (it.budget != nullptr && bk.h.channel_sparsity != 0) t.group_norms = it.budget + kBudgetFields;
    const int32_t task = int32_t(tasks.size());
    tasks.push_back(t);
    const KernelSet& ks = kernels[size_t(it.bucket)];
    if (ks.groups != nullptr) {
      const int64_t per_group = t.outer * t.inner;
      const int64_t step = cpu::groups_per_block(t.outer, t.groups, t.inner, threads);
      for (int64_t q = 0; q < t.groups; q += step) {
        const int64_t q1 = std::min(t.groups, q + step);
        chunks.push_back({ks.groups, task, q, q1, (q1 - q) * per_group});
      }
    } else {
      for (int64_t e = 0; e < t.numel; e += cpu::kChunkElems) {
        const int64_t e1 = std::min(t.numel, e + cpu::kChunkElems);
        chunks.push_back({ks.plain, task, e, e1, e1 - e});
      }
    }
    total += t.numel;
  }
  std::vector<BudgetCounts> counts(chunks.size());
  run_chunks(chunks, tasks, total, counts);
  // Each tensor's counts, summed in chunk order (integers: any order gives the same).
  std::vector<const Item*> item_of_task;
  item_of_task.reserve(tasks.size());
  for (const Item& it : c.items) {
    if (it.stepped && it.numel > 0) item_of_task.push_back(&it);
  }
  for (size_t ch = 0; ch < chunks.size(); ++ch) {
    double* row = item_of_task[size_t(chunks[ch].task)]->budget;
    if (row == nullptr) continue;
    row[kBudgetLo] += counts[ch].lo;
    row[kBudgetMid] += counts[ch].mid;
    row[kBudgetHi] += counts[ch].hi;
  }
}

}  // namespace
}  // namespace proxopt::op

STABLE_TORCH_LIBRARY(proxopt, m) { m.def(proxopt::op::step_schema()); }

STABLE_TORCH_LIBRARY_IMPL(proxopt, CPU, m) { m.impl("step", &proxopt::op::step_cpu); }

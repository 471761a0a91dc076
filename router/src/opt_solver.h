// The locmoe-opt selection (docs/ROUTING.md "## locmoe-opt"): choose for every token at most k
// experts, no expert above capacity C, maximizing sum over kept pairs of v[t,e] = p[t,e] -
// cost(token's rank -> expert's rank). A bipartite b-matching, solved by dual decomposition:
//   1. prices lambda[E] (the same on every rank); each token takes its k best experts by
//      v - lambda (only positive ones) on its own; the group sums the per-expert loads (one
//      allreduce of E int64 per iteration) and every rank updates the prices from the loads by
//      the same rule (sign-based steps that grow while an expert stays on one side of C and halve
//      when it crosses, Rprop). Stops early when the choice satisfies the optimality conditions
//      (no expert above C, every priced expert exactly at C): it is then the LP optimum.
//   2. repair: every expert still above C keeps its C holders with the largest v - lambda
//      (a distributed top-C selection by radix rounds over per-expert 256-bin histograms);
//   3. refill: tokens with a free slot propose their best positive-v expert with spare
//      capacity; an expert offered more than its spare keeps the best offers (same selection).
// Every decision depends only on a token's own values and on integer sums over the group, so the
// result is the same for any number of ranks and threads (route_all_ranks runs the same code on
// all tokens at once, with a reducer that does nothing).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "locmoe/core/bootstrap.h"
#include "locmoe/core/status.h"

namespace locmoe::opt {

// Sums int64 vectors over the EP group in place (nullptr: one process, nothing to do) and counts
// the collectives and their payload.
class Reducer {
 public:
  explicit Reducer(Bootstrap* group) : group_(group) {}
  Status sum(std::span<int64_t> values);
  int64_t rounds() const { return rounds_; }
  int64_t bytes() const { return bytes_; }

 private:
  Bootstrap* group_;
  int64_t rounds_ = 0;
  int64_t bytes_ = 0;
};

struct Problem {
  int64_t tokens = 0;      // local tokens, global ids gid0 .. gid0 + tokens - 1
  int64_t gid0 = 0;
  int32_t experts = 0;     // E
  int32_t k = 0;
  int64_t capacity = 0;    // C > 0
  const float* p = nullptr;        // [tokens, E] gate probabilities
  const float* cost = nullptr;     // [cost rows, E] link cost of expert e from a source rank
  const int32_t* cost_row = nullptr;  // [tokens] the cost row of each token (its rank)
  int32_t iterations = 40;
  int threads = 1;
};

struct Solution {
  std::vector<int32_t> expert;       // [tokens * k], accepted experts first, -1 = none
  std::vector<int32_t> unconstrained;  // [tokens] experts the token takes at zero prices
  std::vector<double> price;         // [E] final prices
  int32_t iterations = 0;            // price iterations run
  bool converged = false;            // stopped on the optimality conditions (before repair)
  int64_t repaired = 0;              // pairs removed by the repair (group)
  int64_t refilled = 0;              // pairs added by the refill (group)
};

// Collective over `reducer`'s group: every rank calls it with its own tokens, the same E, k, C,
// iterations.
Result<Solution> solve(const Problem& problem, Reducer& reducer);

// LocMoE+'s capacity lower bound for locmoe-opt (docs/ROUTING.md "## locmoe-opt", capacity): the
// smallest C in [1, ceiling] at which the tokens' top-k experts by p (ties: lower expert id), each
// expert keeping the C of its choices with the largest p, keep >= tau of the top-k mass; `ceiling`
// with reached = false when even it keeps less. Masses are 2^-32 fixed-point integers (each p
// truncated), target = ceil(tau x top-k mass). Collective over `reducer`'s group (every rank with
// its own tokens' p, [tokens, experts], the same experts, k, tau, ceiling); the same result on
// every rank and for any split of the tokens. Per call: one allreduce of 512 E + 1 int64 (level-1
// counts and masses), then only for the probed C the level-1 figures leave open, up to 3 rounds
// of 256 counts per expert above C and one of 1 int64.
struct TauBound {
  int64_t capacity = 0;
  bool reached = true;
  int64_t topk_fixed = 0;    // top-k mass, 2^-32 units
  int64_t target_fixed = 0;  // ceil(tau x topk_fixed)
  int32_t descents = 0;      // probes the level-1 figures did not settle
};
Result<TauBound> tau_capacity(const float* p, int64_t tokens, int32_t experts, int32_t k, double tau,
                              int64_t ceiling, Reducer& reducer);

}  // namespace locmoe::opt

// Gate backward and auxiliary losses for trainers (spec "For trainers"). Selection is not
// differentiated: a plan's accepted set is a constant; its weights are differentiable in the
// logits z through the softmax (and the renormalization). Every function returns d loss / d z
// (or d loss / d W) so a trainer back-propagates into W and x with its own GEMMs
// (dW = dz^T x, dx = dz W).
//
// Shapes: logits [T, E] row-major float32 for the plan's T local tokens (z = x W^T, as the router
// computed them); all outputs are caller-owned arrays of the stated size, overwritten.
#pragma once

#include <cstdint>
#include <span>

#include "locmoe/core/status.h"
#include "locmoe/router/plan.h"
#include "locmoe/router/router.h"

namespace locmoe {

// d loss / d z from d loss / d weight ([T * k], one per plan slot; -1 slots ignored).
// A plan from a router carries its weight rule (RoutingPlan::weight_rule), which takes precedence
// over `renormalize` (switch's raw p; normalize_before_drop plans are refused); for a plan built
// from caller arrays, renormalize must be the router's RouterConfig::renormalize: with it, a token's weights are the
// softmax restricted to its accepted experts, w_i = exp(z_i) / sum_S exp(z_j), so
// dz_i = w_i (dw_i - sum_S dw_j w_j) on accepted experts and 0 elsewhere; without it, w_i = p_i
// and dz = p (g - <g, p>) with g = dw on accepted experts. d_logits: [T, E].
Status combine_weight_backward(const RoutingPlan& plan, MatrixView logits, std::span<const float> d_weight,
                               bool renormalize, std::span<float> d_logits);

// Auxiliary losses of the gate, each averaged over the T tokens; returns the loss and writes its
// gradient d loss / d z ([T, E]).
//
// Switch load balance: E * sum_e f_e P_e with f_e = accepted slots of expert e in `plan` / (T k)
// (constant) and P_e = mean_t p[t, e].
Result<double> load_balance_loss(const RoutingPlan& plan, MatrixView logits, std::span<float> d_logits);
// Router z-loss: mean_t (logsumexp_t z)^2.
Result<double> z_loss(MatrixView logits, std::span<float> d_logits);
// LocMoE locality loss: KL(q_t || p_t), q_t = p_t restricted to the experts on the token's own
// node (this plan's rank's node) and renormalized; equals -log P_t(own node), gradient p - q.
Result<double> locality_loss(const RoutingPlan& plan, MatrixView logits, std::span<float> d_logits);
// Orthogonality penalty ||Wn Wn^T - I||_F^2 on the row-normalized gate Wn = rows of W / |row|;
// d_gate: [E, H] gradient w.r.t. W (not z).
Result<double> orthogonality_loss(MatrixView gate, std::span<float> d_gate);
// Replaces the rows of gate ([E, H], E <= H, in place) by orthonormal rows spanning the same
// nested subspaces (modified Gram-Schmidt, the Q of a QR of W^T), each scaled back to its
// original norm. Fails on E > H or linearly dependent rows.
Status orthogonalize_gate(std::span<float> gate, int64_t num_experts, int64_t hidden);

}  // namespace locmoe

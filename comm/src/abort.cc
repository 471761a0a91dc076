// Abort notices and the culprit chain (engine.h, AbortNotices).
#include <cstdio>

#include "engine.h"
#include "locmoe/core/check.h"

namespace locmoe::comm_detail {

namespace {
constexpr uint64_t kNoticeTag = uint64_t{kAbort} << 21;  // sequence 0: no data tag matches it
}

Status AbortNotices::start(const Links& links, int me, int n) {
  links_ = links;
  me_ = me;
  n_ = n;
  if (!links.inter->supports(MemoryKind::kHost)) return ok_status();
  in_.resize(n);
  recv_.resize(n);
  from_.assign(n, false);
  waits_on_.assign(n, -1);
  for (int p = 0; p < n; ++p) {
    if (p == me) continue;
    LOCMOE_RETURN_IF_ERROR(links.to(p).post_recv(recv_[p], p, kNoticeTag, &in_[p], sizeof(Notice)));
  }
  return ok_status();
}

Status AbortNotices::poll(std::string_view op) {
  for (int p = 0; p < static_cast<int>(recv_.size()); ++p) {
    Request& r = recv_[p];
    if (p == me_ || r.done || !r.transport) continue;
    if (!r.transport->test(r).ok()) {
      r.transport = nullptr;  // released by test()
      continue;
    }
    if (!r.done) continue;
    Notice& nt = in_[p];
    nt.message[sizeof(Notice::message) - 1] = 0;
    from_[p] = true;
    waits_on_[p] = nt.waiting_on;
    if (nt.code != int32_t(Code::kTimeout)) {
      Status s = error(Code::kPeerFailure, "{} on rank {} aborted: {} gave up: {}", op, me_,
                       peer_name(p, links_.cluster), nt.message);
      send(s, p);
      return s;
    }
  }
  return ok_status();
}

void AbortNotices::send(const Status& why, int waiting_on) {
  if (sent_ || recv_.empty()) return;
  sent_ = true;
  out_.code = static_cast<int32_t>(why.code());
  out_.waiting_on = waiting_on;
  std::snprintf(out_.message, sizeof out_.message, "%s", why.message().c_str());
  send_.resize(n_);
  for (int p = 0; p < n_; ++p)
    if (p != me_) (void)links_.to(p).post_send(send_[p], p, kNoticeTag, &out_, sizeof(Notice));
  for (Request& r : send_)
    if (r.transport && !r.done) (void)r.transport->test(r);  // push eager sends out now
}

std::string AbortNotices::chain(int me, int peer, int* culprit) const {
  std::string out = peer_name(me, links_.cluster);
  int c = peer;
  std::vector<bool> seen(n_, false);
  seen[me] = true;
  while (!seen[c] && heard_from(c) && waits_on_[c] >= 0) {
    seen[c] = true;
    out += " waits for " + peer_name(c, links_.cluster);
    c = waits_on_[c];
  }
  out += " waits for " + peer_name(c, links_.cluster);
  *culprit = c;
  return out;
}

void AbortNotices::cancel_all() {
  for (Request& r : recv_)
    if (!r.done && r.transport) r.transport->cancel(r);
}

}  // namespace locmoe::comm_detail

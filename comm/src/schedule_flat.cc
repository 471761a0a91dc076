// The flat schedule (every rank exchanges directly with every other rank), the flat metadata
// schedule, the ScheduleWriter both builders use, and the statistics of a schedule.
#include <algorithm>

#include "engine.h"
#include "locmoe/core/check.h"

namespace locmoe::comm_detail {

int ScheduleWriter::step(PlanStage stage, int node, uint32_t chunk, int after) {
  PlanStep st;
  st.stage = stage;
  st.node = node;
  st.chunk = chunk;
  st.after = after;
  st.copies_begin = st.copies_end = static_cast<uint32_t>(s_.copies.size());
  st.transfers_begin = st.transfers_end = static_cast<uint32_t>(s_.transfers.size());
  const int i = static_cast<int>(s_.steps.size());
  if (after >= 0) {  // push onto the list of steps waiting for `after`
    st.next_sibling = s_.steps[after].first_dependent;
    s_.steps[after].first_dependent = i;
  }
  s_.steps.push_back(st);
  return i;
}

void ScheduleWriter::copy(PlanBuffer src, uint64_t src_off, PlanBuffer dst, uint64_t dst_off, uint64_t bytes) {
  if (bytes == 0) return;
  s_.copies.push_back(PlanCopy{src, dst, src_off, dst_off, bytes});
  s_.steps.back().copies_end = static_cast<uint32_t>(s_.copies.size());
}

void ScheduleWriter::transfer(bool is_send, int peer, uint32_t tag, PlanBuffer buf, uint64_t off, uint64_t bytes,
                              bool first) {
  PlanTransfer t;
  t.peer = peer;
  t.is_send = is_send;
  t.first_chunk = first;
  t.buf = buf;
  t.tag = tag;
  t.offset = off;
  t.bytes = bytes;
  s_.transfers.push_back(t);
  s_.steps.back().transfers_end = static_cast<uint32_t>(s_.transfers.size());
}

Status ScheduleWriter::check_chunks(uint64_t bytes, const char* what) const {
  const uint64_t chunks = (bytes + chunk_ - 1) / chunk_;
  LOCMOE_CHECK_RANGE(chunks <= kMaxChunks, "{} of {} bytes needs {} chunks of LOCMOE_CHUNK_BYTES={}; at most {}", what,
                     bytes, chunks, chunk_, kMaxChunks);
  return ok_status();
}

Status ScheduleWriter::message(bool is_send, int peer, uint32_t tag, PlanBuffer buf, uint64_t off, uint64_t bytes) {
  if (bytes == 0) return ok_status();
  LOCMOE_RETURN_IF_ERROR(check_chunks(bytes, "message"));
  for (uint64_t c = 0, o = 0; o < bytes; ++c, o += chunk_)
    transfer(is_send, peer, tag + static_cast<uint32_t>(c), buf, off + o, std::min(chunk_, bytes - o), c == 0);
  return ok_status();
}

uint64_t ScheduleWriter::stage(uint64_t bytes) {
  const uint64_t off = (s_.staging_bytes + 63) & ~uint64_t{63};
  s_.staging_bytes = off + bytes;
  return off;
}

Status build_flat_schedule(const ClusterMap& c, const ExchangePlan& p, ScheduleWriter& w) {
  const int n = c.size(), me = c.my_rank;
  w.step(PlanStage::kDirect);
  // Host: the copy to itself needs no transport; device buffers go through the transport to self.
  const bool self_by_transport = p.mem == MemoryKind::kDevice;
  const uint32_t tag = make_tag(kDirect, 0, 0);
  for (int r = 0; r < n; ++r) {
    if (r == me && !self_by_transport) continue;
    LOCMOE_RETURN_IF_ERROR(w.message(false, r, tag, PlanBuffer::kRecv, p.recv_displs[r], p.count(r, me)));
  }
  for (int i = 1; i <= n; ++i) {  // start with the next rank so senders spread over receivers
    const int r = (me + i) % n;
    if (r == me && !self_by_transport) continue;
    LOCMOE_RETURN_IF_ERROR(w.message(true, r, tag, PlanBuffer::kSend, p.send_displs[r], p.count(me, r)));
  }
  if (!self_by_transport) w.copy(PlanBuffer::kSend, p.send_displs[me], PlanBuffer::kRecv, p.recv_displs[me], p.count(me, me));
  return ok_status();
}

Status build_flat_meta_schedule(const ClusterMap& c, uint64_t row_bytes, ScheduleWriter& w) {
  const int n = c.size(), me = c.my_rank;
  w.step(PlanStage::kMetadata);
  const uint32_t tag = make_tag(kMetaA, 0, 0);
  for (int r = 0; r < n; ++r)
    if (r != me) LOCMOE_RETURN_IF_ERROR(w.message(false, r, tag, PlanBuffer::kRecv, r * row_bytes, row_bytes));
  for (int r = 0; r < n; ++r)
    if (r != me) LOCMOE_RETURN_IF_ERROR(w.message(true, r, tag, PlanBuffer::kSend, me * row_bytes, row_bytes));
  return ok_status();
}

ExchangeStats schedule_stats(const Schedule& s, const ClusterMap& c, bool meta) {
  ExchangeStats st;
  const int me = c.my_rank;
  for (const PlanTransfer& t : s.transfers) {
    if (t.peer == me) continue;  // a device exchange's copy to itself is no message
    const bool inter = c.node_of(t.peer) != c.my_node();
    if (!t.is_send) {
      if (!meta && t.buf == PlanBuffer::kRecv) st.bytes_received += t.bytes;
      continue;
    }
    if (meta) {
      if (t.first_chunk) ++st.meta_msgs_sent, st.meta_internode_msgs_sent += inter;
      continue;
    }
    st.msgs_sent += t.first_chunk;
    ++st.chunks_sent;
    st.bytes_sent += t.bytes;
    if (inter) {
      st.internode_msgs_sent += t.first_chunk;
      st.internode_bytes_sent += t.bytes;
    } else {
      st.intranode_bytes_sent += t.bytes;
    }
  }
  // Bytes forwarded to this rank land through the staging area (hierarchical).
  if (!meta)
    for (const PlanCopy& cp : s.copies)
      if (cp.src == PlanBuffer::kStaging && cp.dst == PlanBuffer::kRecv) st.bytes_received += cp.bytes;
  return st;
}

}  // namespace locmoe::comm_detail

#!/usr/bin/env python3
"""Medians over runs of locmoe-perf a2a JSON files (-J) in a folder: per (ranks, transport, size),
flat-planned and flat busbw over MPI_Alltoallv's busbw of the same run, and each run's memcpy.
Usage: perf/a2a_ratios.py DIR   (docs/PERFORMANCE.md "Planned exchanges")."""
import json,glob,statistics as st,collections,sys
res=collections.defaultdict(list); mem=collections.defaultdict(list)
for f in sorted(glob.glob(sys.argv[1]+'/*.json')):
    d=json.load(open(f)); key=(d['ranks'],d['transport'])
    by=collections.defaultdict(dict)
    for r in d['results']: by[r['bytes']][r['algo']]=r['busbw']
    for size,a in by.items(): res[key+(size,)].append((a['flat-planned']/a['mpi'], a['flat']/a['mpi'], a['mpi']))
    mem[key].append(d['memcpy_GBps_per_rank_all_ranks'])
for k in sorted(res):
    v=res[k]; print("%d ranks %s %8d: planned/mpi %.2f (%s)  negotiated/mpi %.2f  mpi busbw %.2f" % (k[0],k[1],k[2], st.median(x[0] for x in v), ",".join("%.2f"%x[0] for x in v), st.median(x[1] for x in v), st.median(x[2] for x in v)))
for k,v in mem.items(): print(k, "memcpy per rank all ranks", ["%.2f"%x for x in v])

#!/usr/bin/env python3
# best / median over reps for each engine x N  (reads results*.txt)
import glob, statistics as st, collections
d = collections.defaultdict(list)
for f in sorted(glob.glob('/tmp/logbench/results*.txt')):
    for l in open(f):
        v = dict(kv.split('=', 1) for kv in l.split() if '=' in kv)
        d[(v['engine'], int(v['N']))].append(v)
order = ["raw1", "raw", "seglog", "fjall", "fjall-tuned", "fjall-kv", "redb"]
print("%-12s%6s%5s %17s %15s %9s %7s %9s %8s" % ("engine", "N", "runs", "msgs/s best/med", "cpu_us best/med", "main_thr", "bg_thr", "B_wr/msg", "disk_MB"))
for (e, n) in sorted(d, key=lambda k: (k[1], order.index(k[0]))):
    r = d[(e, n)]
    g = lambda k: [float(x[k]) for x in r]
    tp, cpu, mt = g('msgs_per_s'), g('cpu_us_incl_settle'), g('main_thread_cpu_us')
    print("%-12s%6d%5d %8.0f/%-8.0f %7.2f/%-7.2f %9.2f %7.2f %9.0f %8.1f" % (e, n, len(r), max(tp), st.median(tp), min(cpu), st.median(cpu), st.median(mt), st.median(cpu) - st.median(mt), st.median(g('wbytes_incl_settle')), st.median(g('disk_alloc_mb'))))

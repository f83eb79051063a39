#!/usr/bin/env bash
# One device call: the screened pass per step at several chunk sizes, and Nsight Compute on lks_select.
source benchmarks/device_prelude.sh prof
python3 benchmarks/profile_large_k_sparse.py --out $OUT/profile_chunks.json --chunks 32,64,128,256 2>&1 | grep -v Warning
which ncu || ls /usr/local/cuda*/bin/ncu
timeout 300 ncu --set full -k regex:lks_select --launch-skip 20 --launch-count 1 --import-source yes \
  -o $OUT/select_sph python3 benchmarks/profile_large_k_sparse.py --out $OUT/junk.json --chunks 64 --covs spherical > $OUT/ncu_log.txt 2>&1
echo ncu exit $?
tail -5 $OUT/ncu_log.txt
ncu --import $OUT/select_sph.ncu-rep --page details > $OUT/select_sph_details.txt 2>&1
ncu --import $OUT/select_sph.ncu-rep --page source --csv --print-source sass > $OUT/select_sph_source.csv 2>&1
ls -la $OUT; grep -E "Duration|Registers|Achieved Occupancy|Issue Slots Busy|Warp Cycles Per Issued|Stall|Memory Throughput|L1/TEX Hit|L2 Hit|DRAM Throughput" $OUT/select_sph_details.txt | head -40

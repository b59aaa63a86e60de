// Package bpf holds atoll's XDP programs: balancer.c (the load balancer),
// decap.c (the node side of ipip forwarding) and bench.c (BPF_PROG_RUN
// benchmark programs), with the Go bindings bpf2go generates from them.
//
// The generated *_bpfel.go and *_bpfel.o files are committed, so building
// atoll needs no clang; `make generate` rebuilds them.
package bpf

//go:generate go tool bpf2go -tags linux -target bpfel -type svc_key -type service -type svc_state -type addr_key -type vip_bits -type backend -type flow_key -type flow4_key -type ct_entry -type fc_entry -type nh_entry -type lb_config -type counters -type name_key -type lpm4_key -type lpm6_key -type affinity -type stat -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" Balancer balancer.c
//go:generate go tool bpf2go -tags linux -target bpfel -type decap_stat -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" Decap decap.c
//go:generate go tool bpf2go -tags linux -target bpfel -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" Bench bench.c
//go:generate go tool bpf2go -tags linux -target bpfel -type hc_target -type hc_stat -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" HC hc.c

package dataplane

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// NewPassProgram returns an XDP program that passes every packet. A veth
// can only XDP_TX when its peer has an XDP program too; on a lab or test
// bridge the peer of the balancer's veth gets this one.
func NewPassProgram() (*ebpf.Program, error) {
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "xdp_pass",
		Type: ebpf.XDP,
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 2), // XDP_PASS
			asm.Return(),
		},
		License: "Dual BSD/GPL",
	})
	if err != nil {
		return nil, fmt.Errorf("dataplane: load pass program: %w", err)
	}
	return p, nil
}

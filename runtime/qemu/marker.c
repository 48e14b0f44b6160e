/* Window markers for the instruction-count plugin (insn_count.c): NOPs on any aarch64 CPU. */
void sparsec_window_open(void) { __asm__ volatile("hint #42" ::: "memory"); }
void sparsec_window_close(void) { __asm__ volatile("hint #43" ::: "memory"); }

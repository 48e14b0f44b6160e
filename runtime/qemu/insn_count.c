/* A qemu-user TCG plugin (plugin API version 1, as in qemu 7.2) counting the aarch64
 * instructions a program executes, and among them the vector FMAs (FMLA / FMLS, by vector and
 * by element). Counting happens in windows: the guest executes `hint #42` to open one and
 * `hint #43` to close it (both are NOPs on real hardware); each closed window appends
 * "window <instructions> <vector_fmas>" to the file named by the plugin argument out=PATH.
 * Debian ships no qemu-plugin.h, so the few API functions used are declared here.
 * Counts are of dynamic instructions: no caches, no pipeline. A proxy for speed, not a time. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*tb_trans_cb)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*vcpu_udata_cb)(unsigned int vcpu_index, void *userdata);
typedef void (*udata_cb)(qemu_plugin_id_t id, void *userdata);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, tb_trans_cb cb);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *insn);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op,
                                              void *ptr, uint64_t imm);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn, vcpu_udata_cb cb,
                                            enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, udata_cb cb, void *userdata);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

#define HINT_OPEN 0xD503255Fu  /* hint #42 */
#define HINT_CLOSE 0xD503257Fu /* hint #43 */

static uint64_t insns, fmas, open_insns, open_fmas;
static FILE *out;

static int is_vector_fma(uint32_t w) {
    /* FMLA/FMLS (vector), single/double: 0 Q 0 01110 o1 sz 1 Rm 110011 Rn Rd */
    if ((w & 0xBF20FC00u) == 0x0E20CC00u) return 1;
    /* FMLA/FMLS (by element), single/double: 0 Q 0 01111 1 sz L M Rm 0 o2 01 H 0 Rn Rd */
    if ((w & 0xBF80B400u) == 0x0F801000u) return 1;
    return 0;
}

static void on_open(unsigned int vcpu, void *udata) {
    open_insns = insns;
    open_fmas = fmas;
}

static void on_close(unsigned int vcpu, void *udata) {
    fprintf(out, "window %llu %llu\n", (unsigned long long)(insns - open_insns),
            (unsigned long long)(fmas - open_fmas));
    fflush(out);
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    size_t n = qemu_plugin_tb_n_insns(tb);
    uint64_t vector = 0;
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint32_t word = 0;
        if (qemu_plugin_insn_size(insn) != 4) continue;
        memcpy(&word, qemu_plugin_insn_data(insn), 4);
        vector += is_vector_fma(word);
        if (word == HINT_OPEN) qemu_plugin_register_vcpu_insn_exec_cb(insn, on_open, QEMU_PLUGIN_CB_NO_REGS, 0);
        if (word == HINT_CLOSE) qemu_plugin_register_vcpu_insn_exec_cb(insn, on_close, QEMU_PLUGIN_CB_NO_REGS, 0);
    }
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &insns, n);
    if (vector) qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &fmas, vector);
}

static void on_exit(qemu_plugin_id_t id, void *udata) {
    fprintf(out, "total %llu %llu\n", (unsigned long long)insns, (unsigned long long)fmas);
    fclose(out);
}

__attribute__((visibility("default")))
int qemu_plugin_install(qemu_plugin_id_t id, const void *info, int argc, char **argv) {
    const char *path = "/dev/stderr";
    for (int i = 0; i < argc; i++)
        if (strncmp(argv[i], "out=", 4) == 0) path = argv[i] + 4;
    out = fopen(path, "w");
    if (!out) return -1;
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, on_exit, 0);
    return 0;
}

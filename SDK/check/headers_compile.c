/* Compiles every SDK header (each on its own first, then all together): building this target
 * is the check that the headers are self-contained C. The per-header -Wall -Werror C99 check
 * runs in the tests with the system C compiler. */
#include "espalier/espalier_abi.h"
#include "espalier/espalier_host.h"
#include "espalier/espalier_op.h"
#include "espalier/espalier_gate.h"
#include "espalier/espalier_regularizer.h"
#include "espalier/espalier_strategy.h"
#include "espalier/espalier.h"

int espalier_sdk_headers_compile(void) { return ESPALIER_ABI_MAJOR; }

#include <espalier/espalier.h>
